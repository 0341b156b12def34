using System.Globalization;

namespace Conveyor.Api.Hosting;

/// <summary>
/// A request's transaction that holds what other requests wait for (an Idempotency-Key's lock, a job row not yet
/// committed, a dashboard key name's lock) tells the server, in its first statement, to end it once it has waited
/// <see cref="Limit"/> for the Api's next statement (<c>idle_in_transaction_session_timeout</c>, is_local: the pooled
/// connection goes back as it came). When the Api's path to PostgreSQL breaks after the server has answered a
/// statement (a partition), the session otherwise sat idle in its transaction, holding all of it, until the server's
/// TCP keepalive gave up on the connection, minutes later. Between two statements of such a transaction the Api only
/// builds the next one, so the limit ends nothing that is still alive.
/// </summary>
internal static class IdleTransactions
{
    public static readonly TimeSpan Limit = TimeSpan.FromSeconds(10);

    /// <summary>The setting's value, in milliseconds, for <c>set_config</c>.</summary>
    public static readonly string LimitMilliseconds = ((long)Limit.TotalMilliseconds).ToString(CultureInfo.InvariantCulture);

    /// <summary>A statement that sets the limit alone, for a transaction whose first statement has nothing to carry it.</summary>
    public static FormattableString SetLimit() =>
        $"SELECT set_config('idle_in_transaction_session_timeout', {LimitMilliseconds}, true)";
}
