namespace Conveyor.Api.ErrorQueues;

/// <summary>
/// Header names on dead-lettered messages: MassTransit's fault headers and the ones Conveyor's worker
/// adds (see the worker's DeadLetterHeadersFilter and RedeliveryHeaders). Part of the wire format.
/// </summary>
public static class FaultHeaders
{
    public const string ExceptionType = "MT-Fault-ExceptionType";
    public const string Message = "MT-Fault-Message";
    public const string StackTrace = "MT-Fault-StackTrace";
    public const string Timestamp = "MT-Fault-Timestamp";
    public const string InputAddress = "MT-Fault-InputAddress";
    public const string ConsumerType = "MT-Fault-ConsumerType";
    public const string MessageType = "MT-Fault-MessageType";
    public const string Reason = "MT-Reason";

    public const string JobKind = "Conveyor-Job-Kind";
    public const string Attempts = "Conveyor-Attempts";
    public const string DeadLetterReason = "Conveyor-Dead-Letter-Reason";
    public const string FirstFailureAt = "Conveyor-First-Failure-At";
    public const string RedeliveryAttempt = "Conveyor-Redelivery-Attempt";

    /// <summary>Added to a moved copy: the last few faults it had, newest last (a JSON array).</summary>
    public const string FaultHistory = Contracts.JobHeaders.FaultHistory;

    /// <summary>Added to a moved copy: the queue it was moved from.</summary>
    public const string MovedFrom = Contracts.JobHeaders.MovedFrom;

    /// <summary>Added to a moved copy: the id of the operation that moved it.</summary>
    public const string MovedBy = Contracts.JobHeaders.MovedByOperation;
}
