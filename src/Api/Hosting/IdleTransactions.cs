using System.ComponentModel.DataAnnotations;
using System.Globalization;
using Microsoft.Extensions.Options;

namespace Conveyor.Api.Hosting;

/// <summary>The Api's limit on its own transactions left waiting for their next statement (section <c>Database</c>).</summary>
public sealed class IdleTransactionOptions
{
    public const string SectionName = "Database";

    /// <summary>
    /// How long the server keeps a request's locking transaction waiting for the Api's next statement before it ends it
    /// (<see cref="IdleTransactions"/>). Between two such statements the Api only builds the next one, so a live request
    /// never comes near it; lower means a partitioned Api holds its locks for less time.
    /// </summary>
    [Range(1, 3600)]
    public int IdleTransactionLimitSeconds { get; set; } = 10;
}

/// <summary>
/// A request's transaction that holds what other requests wait for (an Idempotency-Key's lock, a job row not yet
/// committed, a dashboard key name's lock) tells the server, in its first statement, to end it once it has waited
/// <see cref="IdleTransactionOptions.IdleTransactionLimitSeconds"/> for the Api's next statement
/// (<c>idle_in_transaction_session_timeout</c>, is_local: the pooled connection goes back as it came). When the Api's
/// path to PostgreSQL breaks after the server has answered a statement (a partition), the session otherwise sat idle in
/// its transaction, holding all of it, until the server's TCP keepalive gave up on the connection, minutes later.
/// </summary>
public sealed class IdleTransactions(IOptions<IdleTransactionOptions> options)
{
    /// <summary>The setting's value, in milliseconds, for <c>set_config</c>.</summary>
    public string LimitMilliseconds { get; } =
        (options.Value.IdleTransactionLimitSeconds * 1000L).ToString(CultureInfo.InvariantCulture);

    /// <summary>A statement that sets the limit alone, for a transaction whose first statement has nothing to carry it.</summary>
    public FormattableString SetLimit() =>
        $"SELECT set_config('idle_in_transaction_session_timeout', {LimitMilliseconds}, true)";
}

internal static class IdleTransactionRegistration
{
    public static IServiceCollection AddIdleTransactionLimit(this IServiceCollection services)
    {
        services.AddOptions<IdleTransactionOptions>()
            .BindConfiguration(IdleTransactionOptions.SectionName)
            .ValidateDataAnnotations()
            .ValidateOnStart();
        services.AddSingleton<IdleTransactions>();
        return services;
    }
}
