namespace Conveyor.Contracts;

/// <summary>Message headers that Conveyor reads and writes; part of the wire format.</summary>
public static class JobHeaders
{
    /// <summary>The job id (a UUID) the Api assigned; absent when another service published directly.</summary>
    public const string JobId = "Conveyor-Job-Id";

    /// <summary>On a copy moved back from an error queue: the queue it was moved from.</summary>
    public const string MovedFrom = "Conveyor-Moved-From";

    /// <summary>On a copy moved back from an error queue: the id of the operation that moved it.</summary>
    public const string MovedByOperation = "Conveyor-Moved-By-Operation";

    /// <summary>On a copy moved back from an error queue: the last few faults it had, newest last (a JSON array).</summary>
    public const string FaultHistory = "Conveyor-Fault-History";

    /// <summary>
    /// The most UTF-8 bytes a move writes in <see cref="FaultHistory"/>: older faults drop off to keep it
    /// within this, so a consumer's header size check can leave a move's headers out up to a known bound.
    /// </summary>
    public const int MaxFaultHistoryBytes = 8_192;
}
