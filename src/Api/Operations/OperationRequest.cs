using Conveyor.Api.ErrorQueues;

namespace Conveyor.Api.Operations;

/// <summary>A validated move or purge request, with who asked.</summary>
public sealed record OperationRequest(
    string Kind,
    string Queue,
    MessageFilter Filter,
    string? Target,
    int? Limit,
    bool DryRun,
    string RequestedBy,
    string? ClientAddress);

public enum StartStatus
{
    Started,

    /// <summary>Another operation or inspection holds the queue.</summary>
    Busy,
}

/// <summary>The outcome of asking for an operation; <see cref="RunningOperationId"/> names the one in the way, when known.</summary>
public sealed record StartResult(StartStatus Status, Guid? OperationId = null, Guid? RunningOperationId = null);
