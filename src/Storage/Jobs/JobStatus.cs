namespace Conveyor.Storage.Jobs;

/// <summary>Job statuses as stored and as the API shows them.</summary>
public static class JobStatus
{
    public const string Queued = "queued";
    public const string Running = "running";
    public const string Succeeded = "succeeded";
    public const string Failed = "failed";
}
