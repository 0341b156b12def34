using System.Text.Json;
using Conveyor.Storage.Operations;

namespace Conveyor.Api.Operations;

/// <summary>
/// A move or purge as <c>GET /api/operations/{id}</c> and <c>GET /api/audit</c> show it: who asked
/// (<see cref="RequestedBy"/>), what (<see cref="Kind"/>, <see cref="Filter"/>), when, from
/// (<see cref="Queue"/>), to (<see cref="Target"/> or per-queue <see cref="Targets"/>), how many, which.
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
    string RequestedBy,
    string? ClientAddress,
    long QueueDepthAtStart,
    long Examined,
    long Matched,
    long Moved,
    long Purged,
    long Failed,
    long? Left,
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
        JsonSerializer.Deserialize<List<string>>(o.MessageIds) ?? [],
        o.MessageIdsTruncated,
        o.Detail,
        o.CreatedAt,
        o.UpdatedAt,
        o.FinishedAt);
}
