using System.Text.Json;
using Conveyor.Api.ErrorQueues;
using Conveyor.Storage.Operations;

namespace Conveyor.Api.Operations;

/// <summary>
/// A move or purge as <c>GET /api/operations/{id}</c> and <c>GET /api/audit</c> show it: who asked
/// (<see cref="RequestedBy"/>), what (<see cref="Kind"/>, <see cref="Filter"/>), when, from
/// (<see cref="Queue"/>), to (<see cref="Target"/> or per-queue <see cref="Targets"/>), how many, which.
/// <see cref="Partial"/> marks a <c>succeeded</c> operation that did only part of what it set out to:
/// matched messages it could not move (<see cref="Failed"/>, such as a target queue that does not exist;
/// they stay in the error queue), or a walk that stopped before examining every message (<see cref="Detail"/>
/// says why). <see cref="JobsMissing"/>: of the jobs the selected messages name, those whose row is gone
/// (swept after <c>Retention:JobHours</c>): moving their messages back runs them again with no
/// deduplication, and purging them deletes the last record of those jobs; null while it runs or when the
/// database could not be read.
/// </summary>
public sealed record OperationView(
    Guid OperationId,
    string Kind,
    string Queue,
    string? Target,
    IReadOnlyDictionary<string, long> Targets,
    JsonElement Filter,
    int? Limit,
    bool DryRun,
    string State,
    bool Partial,
    string RequestedBy,
    string? ClientAddress,
    long QueueDepthAtStart,
    long Examined,
    long Matched,
    long Moved,
    long Purged,
    long Failed,
    long? Left,
    long? JobsMissing,
    IReadOnlyList<string> MessageIds,
    bool MessageIdsTruncated,
    string? Detail,
    DateTimeOffset CreatedAt,
    DateTimeOffset UpdatedAt,
    DateTimeOffset? FinishedAt)
{
    internal static OperationView From(ErrorQueueOperation o) => new(
        o.Id,
        o.Kind,
        o.Queue,
        o.Target,
        JsonSerializer.Deserialize<Dictionary<string, long>>(o.Targets) ?? [],
        JsonSerializer.Deserialize<JsonElement>(o.Filter),
        o.Limit,
        o.DryRun,
        o.State,
        // A succeeded operation records a detail only when it failed to move some or stopped early, or
        // (which is no failure) when it checked the job rows of only part of what it selected.
        o.State == ErrorQueueOperationStates.Succeeded
            && (o.Failed > 0 || (o.Detail is not null && o.Detail != OperationVisitor.JobIdsPartialDetail)),
        o.RequestedBy,
        o.ClientAddress,
        o.QueueDepthAtStart,
        o.Examined,
        o.Matched,
        o.Moved,
        o.Purged,
        o.Failed,
        // While it runs: what is left of the messages it set out to examine.
        o.Left ?? (o.State == ErrorQueueOperationStates.Running ? Math.Max(0, o.QueueDepthAtStart - o.Moved - o.Purged) : null),
        o.JobsMissing,
        JsonSerializer.Deserialize<List<string>>(o.MessageIds) ?? [],
        o.MessageIdsTruncated,
        o.Detail,
        o.CreatedAt,
        o.UpdatedAt,
        o.FinishedAt);
}
