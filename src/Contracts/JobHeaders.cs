namespace Conveyor.Contracts;

/// <summary>Message headers that Conveyor reads and writes; part of the wire format.</summary>
public static class JobHeaders
{
    /// <summary>The job id (a UUID) the Api assigned; absent when another service published directly.</summary>
    public const string JobId = "Conveyor-Job-Id";

    /// <summary>On a copy moved back from an error queue: the queue it was moved from.</summary>
    public const string MovedFrom = "Conveyor-Moved-From";
}
