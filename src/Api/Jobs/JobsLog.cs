namespace Conveyor.Api.Jobs;

internal static partial class JobsLog
{
    // Debug, as 1005: at Information (the shipped level) every submission would pay for a formatted
    // log line; the job row and the request's trace record every job already.
    [LoggerMessage(EventId = 1001, Level = LogLevel.Debug,
        Message = "Job {JobId} ({Kind} {BusinessKey}) queued and published")]
    public static partial void JobQueued(ILogger logger, Guid jobId, string kind, string businessKey);

    [LoggerMessage(EventId = 1002, Level = LogLevel.Information,
        Message = "Idempotency-Key of job {JobId} reused with another request; refused")]
    public static partial void IdempotencyKeyReused(ILogger logger, Guid jobId);

    [LoggerMessage(EventId = 1013, Level = LogLevel.Information,
        Message = "Business id of job {JobId} ({Kind} {BusinessKey}) submitted again with another command; refused (ADR 0011)")]
    public static partial void BusinessIdReused(ILogger logger, Guid jobId, string kind, string businessKey);

    [LoggerMessage(EventId = 1003, Level = LogLevel.Warning,
        Message = "Publishing job {JobId} ({Kind}) was not confirmed; removing its row and answering 503")]
    public static partial void PublishFailed(ILogger logger, Exception exception, Guid jobId, string kind);

    [LoggerMessage(EventId = 1004, Level = LogLevel.Error,
        Message = "Could not remove the row of unpublished job {JobId}; it stays queued until the same request is submitted again or the stranded-job check publishes it from the stored request")]
    public static partial void RemoveUnpublishedFailed(ILogger logger, Exception exception, Guid jobId);

    [LoggerMessage(EventId = 1014, Level = LogLevel.Warning,
        Message = "Job {JobId} was not published, and its row is kept: its insert waited so long that a repeat may have been answered with it since; it stays queued until the same request is submitted again or the stranded-job check publishes it from the stored request")]
    public static partial void UnpublishedRowKept(ILogger logger, Guid jobId);

    [LoggerMessage(EventId = 1005, Level = LogLevel.Debug,
        Message = "Job {JobId} ({Kind} {BusinessKey}) scheduled for {RunAt:O}")]
    public static partial void JobScheduled(ILogger logger, Guid jobId, string kind, string businessKey, DateTimeOffset runAt);

    [LoggerMessage(EventId = 1006, Level = LogLevel.Information, Message = "Job {JobId} ({Kind}) cancelled")]
    public static partial void JobCancelled(ILogger logger, Guid jobId, string kind);

    [LoggerMessage(EventId = 1018, Level = LogLevel.Information,
        Message = "Job {JobId} ({Kind}, {Status}) made due now on request: {Released} stored command(s) released to the dispatchers")]
    public static partial void JobRunNow(ILogger logger, Guid jobId, string kind, string status, int released);

    [LoggerMessage(EventId = 1019, Level = LogLevel.Information,
        Message = "{Released} {Kind} job(s) {Status} made due now on request; {StillWaiting} still wait for their time")]
    public static partial void JobsRunNow(ILogger logger, string kind, string status, int released, int stillWaiting);

    [LoggerMessage(EventId = 1007, Level = LogLevel.Information,
        Message = "Job {JobId} ({Kind} {BusinessKey}) was still queued {Age} after it was last updated and the same request came again: its command was published again (the inbox applies it once)")]
    public static partial void JobRepublished(ILogger logger, Guid jobId, string kind, string businessKey, TimeSpan age);

    [LoggerMessage(EventId = 1012, Level = LogLevel.Debug,
        Message = "Job {JobId} ({Kind} {BusinessKey}) was submitted again while the request that created it could still be publishing: this request published its command too (the inbox applies it once)")]
    public static partial void RecentJobPublished(ILogger logger, Guid jobId, string kind, string businessKey);

    [LoggerMessage(EventId = 1015, Level = LogLevel.Warning,
        Message = "A {Kind} submission refused for backpressure could not be looked up as a repeat of an accepted job: the database is unavailable; answering the refusal")]
    public static partial void RepeatLookupFailed(ILogger logger, Exception exception, string kind);
}
