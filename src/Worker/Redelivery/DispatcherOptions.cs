using System.ComponentModel.DataAnnotations;

namespace Conveyor.Worker.Redelivery;

/// <summary>Section <c>Redelivery</c>: the dispatcher that publishes due scheduled messages, in every worker.</summary>
public sealed class DispatcherOptions : IValidatableObject
{
    public const string SectionName = "Redelivery";

    public bool DispatcherEnabled { get; set; } = true;

    /// <summary>Rows claimed (FOR UPDATE SKIP LOCKED) and published per transaction.</summary>
    [Range(1, 5_000)]
    public int BatchSize { get; set; } = 200;

    /// <summary>
    /// The most body and header bytes one batch loads and publishes, whatever <see cref="BatchSize"/>
    /// allows: a batch of large redeliveries (bodies up to <c>Consumers:*:MaxMessageBytes</c>) would
    /// otherwise hold hundreds of MiB at once, past the worker's memory limit, and every pod that then
    /// claimed the same rows would be killed in turn. A row larger than this on its own goes out alone.
    /// </summary>
    [Range(65_536, 1_073_741_824)]
    public int MaxBatchBytes { get; set; } = 16 * 1024 * 1024;

    /// <summary>
    /// The longest sleep without a NOTIFY; a safety net, not the normal wake-up. A dispatcher that
    /// cannot open its LISTEN session dispatches on this poll alone and tries LISTEN again this often.
    /// </summary>
    [Range(1, 300)]
    public int MaxIdleSeconds { get; set; } = 10;

    /// <summary>
    /// How long one batch's publishes may wait for their confirms (a broker blocking publishers in a
    /// memory or disk alarm sends none). Past it the rows not confirmed are left as they were and the
    /// rows confirmed are deleted, in one commit, so the former are free for any dispatcher again, and
    /// this one backs off; a copy the broker took without its confirm arriving goes out again later,
    /// which the inbox absorbs. Also bounds how long a claim may stay idle in its transaction
    /// (<see cref="RedeliveryDispatcher.ClaimIdleLimit"/>), so a dispatcher that vanished mid-batch lets its rows go.
    /// </summary>
    [Range(1, 600)]
    public int PublishTimeoutSeconds { get; set; } = 30;

    /// <summary>How long a row whose publish failed (queue gone, broker refused) waits before the next try.</summary>
    [Range(1, 3_600)]
    public int FailedPublishBackoffSeconds { get; set; } = 30;

    /// <summary>
    /// How long past its due time a scheduled message may wait before the worker's readiness report
    /// marks <see cref="ScheduledBacklog.HealthCheckName"/> Degraded. Above <see cref="FailedPublishBackoffSeconds"/>
    /// and <see cref="MaxIdleSeconds"/>, so a publish refused once and taken at its next try, or a dispatcher between wake-ups,
    /// is not reported; a row refused for longer counts as overdue since its first refusal.
    /// </summary>
    [Range(1, 86_400)]
    public int OverdueAfterSeconds { get; set; } = 120;

    /// <summary>
    /// <see cref="OverdueAfterSeconds"/> above the waits a healthy dispatcher makes (a refused publish's
    /// back-off, the idle sleep), or the readiness report and its alert would flag those as overdue.
    /// </summary>
    public IEnumerable<ValidationResult> Validate(ValidationContext validationContext)
    {
        if (OverdueAfterSeconds <= Math.Max(FailedPublishBackoffSeconds, MaxIdleSeconds))
        {
            yield return new ValidationResult(
                $"OverdueAfterSeconds ({OverdueAfterSeconds}) must be more than FailedPublishBackoffSeconds ({FailedPublishBackoffSeconds}) and MaxIdleSeconds ({MaxIdleSeconds})",
                [nameof(OverdueAfterSeconds)]);
        }
    }

    /// <summary>
    /// How often the <see cref="ScheduledBacklog.OverdueInstrument"/> gauge is refreshed from the table; it reports nothing
    /// once its last reading is <see cref="ScheduledBacklog.StaleAfterReadings"/> periods old.
    /// </summary>
    [Range(1, 3_600)]
    public int BacklogRefreshSeconds { get; set; } = 15;
}
