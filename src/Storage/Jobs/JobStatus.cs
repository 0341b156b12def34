namespace Conveyor.Storage.Jobs;

/// <summary>Job statuses as stored and as the API shows them.</summary>
public static class JobStatus
{
    /// <summary>Submitted with a future <c>runAt</c>; published by the dispatcher when due.</summary>
    public const string Scheduled = "scheduled";

    public const string Queued = "queued";
    public const string Running = "running";
    public const string RetryScheduled = "retry-scheduled";
    public const string Succeeded = "succeeded";

    /// <summary>Every attempt is spent or the failure was permanent: the message is in <c>&lt;queue&gt;_error</c>.</summary>
    public const string DeadLettered = "dead-lettered";

    /// <summary>Cancelled before it ran; a worker that receives it acks it without running it.</summary>
    public const string Cancelled = "cancelled";

    /// <summary>Every status, in the order a job can reach them.</summary>
    public static IReadOnlyList<string> All { get; } = [Scheduled, Queued, Running, RetryScheduled, Succeeded, DeadLettered, Cancelled];
}
