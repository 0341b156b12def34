namespace Conveyor.Storage.Jobs;

/// <summary>Job statuses as stored and as the API shows them.</summary>
public static class JobStatus
{
    public const string Queued = "queued";
    public const string Running = "running";
    public const string RetryScheduled = "retry-scheduled";
    public const string Succeeded = "succeeded";

    /// <summary>Every attempt is spent or the failure was permanent: the message is in <c>&lt;queue&gt;_error</c>.</summary>
    public const string DeadLettered = "dead-lettered";
}
