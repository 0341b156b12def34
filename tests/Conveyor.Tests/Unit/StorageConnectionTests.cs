using Conveyor.Storage;
using Npgsql;

namespace Conveyor.Tests.Unit;

/// <summary>
/// The connection string EF contexts use: prepared hot statements, no reset, custom plans, and a
/// statement limit the server enforces before the client's own, unless told otherwise.
/// </summary>
public sealed class StorageConnectionTests
{
    [Fact]
    public void Contexts_prepare_statements_skip_the_reset_and_plan_every_execution_by_default()
    {
        var settings = new NpgsqlConnectionStringBuilder(
            StorageServiceCollectionExtensions.ForContexts("Host=db;Database=conveyor;Username=u;Password=p"));

        Assert.Equal(64, settings.MaxAutoPrepare);
        Assert.Equal(2, settings.AutoPrepareMinUsages);
        Assert.True(settings.NoResetOnClose);
        Assert.Equal("-c plan_cache_mode=force_custom_plan -c statement_timeout=30s", settings.Options);
        Assert.Equal(45, settings.CommandTimeout);
        Assert.True(settings.CommandTimeout > StorageServiceCollectionExtensions.StatementTimeoutSeconds, "the server's limit comes first");
        Assert.Equal("db", settings.Host);
    }

    [Fact]
    public void What_the_connection_string_sets_itself_wins()
    {
        var settings = new NpgsqlConnectionStringBuilder(StorageServiceCollectionExtensions.ForContexts(
            "Host=db;Database=conveyor;Max Auto Prepare=0;AutoPrepareMinUsages=9;No Reset On Close=false;Command Timeout=7;Options=-c statement_timeout=5000"));

        Assert.Equal(0, settings.MaxAutoPrepare);
        Assert.Equal(9, settings.AutoPrepareMinUsages);
        Assert.False(settings.NoResetOnClose);
        Assert.Equal(7, settings.CommandTimeout);
        // Each server setting the Options do not name is added to them.
        Assert.Equal("-c statement_timeout=5000 -c plan_cache_mode=force_custom_plan", settings.Options);
    }
}
