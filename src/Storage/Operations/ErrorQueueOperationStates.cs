namespace Conveyor.Storage.Operations;

public static class ErrorQueueOperationStates
{
    public const string Running = "running";
    public const string Succeeded = "succeeded";

    /// <summary>Ended by an error; messages it had not finished with stay in the queue.</summary>
    public const string Failed = "failed";

    /// <summary>Stopped early because the Api shut down; messages it had not finished with stay.</summary>
    public const string Cancelled = "cancelled";

    /// <summary>
    /// The process running it died; found so by the next operation on the queue, or when operations are
    /// read and it has recorded no progress for <c>ErrorQueues:AbandonedAfterSeconds</c>.
    /// </summary>
    public const string Interrupted = "interrupted";
}
