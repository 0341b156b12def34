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

    [Theory]
    [InlineData("--statement-timeout=5000")]
    [InlineData("--statement_timeout=5000")]
    [InlineData("-c statement-timeout=5000")]
    [InlineData("-cstatement_timeout=5000")]
    [InlineData("-c Statement_Timeout=5000")]
    [InlineData("  -c   statement_timeout=5000  ")]
    public void A_statement_timeout_the_options_set_in_any_form_the_server_takes_is_left_alone(string given)
    {
        var settings = new NpgsqlConnectionStringBuilder(
            StorageServiceCollectionExtensions.ForContexts($"Host=db;Database=conveyor;Options={given}"));

        // PostgreSQL reads a setting from the options as -c name=value, -cname=value or --name=value, its name in any
        // casing and with dashes for underscores. Before, only the -c form with underscores was seen, and ours came after
        // the dashed forms, overriding the operator's limit without a word.
        Assert.Equal($"{given.Trim()} -c plan_cache_mode=force_custom_plan", settings.Options);
    }

    [Theory]
    [InlineData("--plan-cache-mode=auto", "--plan-cache-mode=auto -c statement_timeout=30s")]
    [InlineData("-c plan_cache_mode=auto --statement-timeout=0", "-c plan_cache_mode=auto --statement-timeout=0")]
    public void Each_server_setting_the_options_name_in_a_dashed_form_is_theirs(string given, string expected)
    {
        var settings = new NpgsqlConnectionStringBuilder(
            StorageServiceCollectionExtensions.ForContexts($"Host=db;Database=conveyor;Options={given}"));

        Assert.Equal(expected, settings.Options);
    }

    [Theory]
    [InlineData("-c application_name=statement_timeout_probe")]
    [InlineData("-c search_path=statement-timeout")]
    [InlineData(@"-c application_name=a\ --statement-timeout=5")]
    public void A_setting_whose_value_only_mentions_the_statement_timeout_leaves_ours_in_place(string given)
    {
        var settings = new NpgsqlConnectionStringBuilder(
            StorageServiceCollectionExtensions.ForContexts($"Host=db;Database=conveyor;Options={given}"));

        // Only a setting's name counts (a value with an escaped space is still one word): a value that mentions it
        // sets no limit, and the server would otherwise run without one.
        Assert.Equal($"{given} -c plan_cache_mode=force_custom_plan -c statement_timeout=30s", settings.Options);
    }
}
