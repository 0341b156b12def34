using System.ComponentModel.DataAnnotations;
using System.Globalization;
using Npgsql;

namespace Conveyor.Api.Jobs;

/// <summary>Settings of the job listing's settle horizon (section <c>Jobs</c>, ADR 0013).</summary>
public sealed class JobListingOptions
{
    /// <summary>
    /// How old a job's <c>created_at</c> must be, by the database's clock, before <c>GET /api/jobs?order=oldest</c>
    /// lists it: no job row commits later than this after its <c>created_at</c> (<see cref="SettleHorizon"/>).
    /// </summary>
    [Range(3, 3600)]
    public int ListingSettleSeconds { get; set; } = 60;
}

/// <summary>
/// The promise the oldest-first listing rests on (ADR 0013): a job row commits within <see cref="Horizon"/> of its
/// <c>created_at</c>, or never. The Api stamps <c>created_at</c> before its row waits for anything (a batch slot
/// of <see cref="JobRows"/>, a pooled connection, an Idempotency-Key's lock), so the waits are bounded where they
/// end: the write refuses the row once it has waited <see cref="StartWithin"/> (a third of the horizon) since its
/// <c>created_at</c>, measured as waits, each on one clock (the Api's until the write is sent, the database's since its
/// transaction began), never by comparing the two clocks; and what follows that check in its transaction is bounded by the
/// server (<see cref="TailLimit"/>, another third, as <c>statement_timeout</c> or <c>idle_in_transaction_session_timeout</c>).
/// What is left, the last third, is the margin for the commit itself. A row refused so is not written: the
/// submission answers 503, as for a database that cannot be reached, and sending it again is safe.
/// </summary>
internal readonly record struct SettleHorizon(TimeSpan Horizon)
{
    public static SettleHorizon From(JobListingOptions options) => new(TimeSpan.FromSeconds(options.ListingSettleSeconds));

    /// <summary>The statement that writes a job row must check its age within this of its <c>created_at</c>.</summary>
    public TimeSpan StartWithin => Horizon / 3;

    /// <summary>The longest the server lets the rest of that statement, or the wait for the commit after it, take.</summary>
    public TimeSpan TailLimit => Horizon / 3;

    /// <summary><see cref="StartWithin"/> as a PostgreSQL interval parameter.</summary>
    public NpgsqlParameter<TimeSpan> StartWithinParameter() => new() { TypedValue = StartWithin };

    /// <summary><see cref="TailLimit"/> in milliseconds, for <c>set_config</c>.</summary>
    public string TailLimitMilliseconds => ((long)TailLimit.TotalMilliseconds).ToString(CultureInfo.InvariantCulture);

    /// <summary>What a submission whose row was refused for its age fails with: the database did not take it in time (503).</summary>
    public static NpgsqlException TooLate(Guid jobId) => new(
        $"The row of job {jobId} was not written: its write started more than a third of Jobs:ListingSettleSeconds after the submission (ADR 0013).",
        new TimeoutException());
}
