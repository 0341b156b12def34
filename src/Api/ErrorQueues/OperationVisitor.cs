using Conveyor.Storage.Operations;
using RabbitMQ.Client;

namespace Conveyor.Api.ErrorQueues;

/// <summary>What a move or purge is asked to do.</summary>
public sealed record OperationPlan(
    string Kind,
    string Queue,
    MessageFilter Filter,
    string? Target,
    int? Limit,
    bool DryRun,
    Guid? OperationId,
    int MessageIdLimit);

/// <summary>
/// Moves or purges the messages that match a filter, up to a limit; keeps the others. Counts what it
/// did and remembers (a bounded number of) the affected message ids for the audit trail; ids and
/// target queue names come from the broker and are escaped as <see cref="AuditText"/> says. Also
/// collects the distinct job ids of the messages it selects, so that the runner can count those whose
/// job row is gone (<see cref="ErrorQueueOperation.JobsMissing"/>).
/// </summary>
public sealed class OperationVisitor(OperationPlan plan) : WalkVisitor
{
    /// <summary>
    /// At most this many job ids are kept (16 bytes each plus the set's overhead: a few MB); the jobs
    /// of further messages are not checked, and <see cref="JobIds"/> says so.
    /// </summary>
    public const int MaxJobIdsKept = 100_000;

    /// <summary>
    /// The operation's detail says so when <see cref="MaxJobIdsKept"/> was reached. It is a caveat on
    /// the count, not on the work: alone, it does not make a succeeded operation partial.
    /// </summary>
    public const string JobIdsPartialDetail =
        "Job rows were checked for the first 100,000 distinct jobs of the selected messages only; jobsMissing counts among those.";

    private const int MaxErrorsKept = 5;

    private readonly object _gate = new();
    private readonly List<string> _messageIds = [];
    private readonly Dictionary<string, long> _targets = new(StringComparer.Ordinal);
    private readonly List<string> _errors = [];
    private readonly HashSet<Guid> _jobIds = [];
    private long _matched;
    private long _moved;
    private long _purged;
    private long _failed;
    private bool _idsTruncated;
    private bool _jobIdsPartial;

    public long Matched => Interlocked.Read(ref _matched);

    public long Moved => Interlocked.Read(ref _moved);

    public long Purged => Interlocked.Read(ref _purged);

    public long Failed => Interlocked.Read(ref _failed);

    public override bool Publishes => plan.Kind == ErrorQueueOperationKinds.Move && !plan.DryRun;

    public override bool IsDone => plan.Limit is { } limit && Matched >= limit;

    public override object? Inspect(FaultedMessage message, IReadOnlyBasicProperties properties, ReadOnlyMemory<byte> body)
    {
        if (!plan.Filter.Matches(message))
        {
            return null;
        }

        if (plan.Kind != ErrorQueueOperationKinds.Move)
        {
            return Match.Instance;
        }

        var target = plan.Target ?? ErrorQueueNames.OriginalQueueOf(message.InputAddress, plan.Queue);
        if (target == plan.Queue)
        {
            return new Refused($"The message's original queue is '{target}' itself.");
        }

        // A dry run resolves and checks the target as a move does, so it predicts the move's failures too.
        return plan.DryRun
            ? ForwardCopy.Unpublished(target)
            : new ForwardCopy(target, FreshCopy.Build(properties, message, plan.Queue, plan.OperationId), body.ToArray());
    }

    public override (WalkAction Action, ForwardCopy? Copy) Decide(FaultedMessage message, object? inspection)
    {
        if (inspection is null || IsDone)
        {
            return (WalkAction.Keep, null);
        }

        Interlocked.Increment(ref _matched);
        switch (inspection)
        {
            case Refused refused:
                Interlocked.Increment(ref _failed);
                RecordError(refused.Reason);
                return (WalkAction.Keep, null);

            case ForwardCopy copy:
                return (plan.DryRun ? WalkAction.CheckTarget : WalkAction.Forward, copy);

            default:
                if (plan.DryRun)
                {
                    RecordId(message, null);
                    return (WalkAction.Keep, null);
                }

                return (WalkAction.Remove, null);
        }
    }

    public override void Completed(FaultedMessage message, WalkOutcome outcome, string? target, string? failure)
    {
        switch (outcome)
        {
            case WalkOutcome.Forwarded:
                Interlocked.Increment(ref _moved);
                RecordId(message, target);
                break;

            case WalkOutcome.Removed:
                Interlocked.Increment(ref _purged);
                RecordId(message, null);
                break;

            case WalkOutcome.WouldForward:
                RecordId(message, target);
                break;

            default:
                Interlocked.Increment(ref _failed);
                RecordError(failure ?? "The copy was not confirmed.");
                break;
        }
    }

    /// <summary>A consistent copy of what the audit trail records.</summary>
    public (IReadOnlyList<string> MessageIds, bool Truncated, IReadOnlyDictionary<string, long> Targets, IReadOnlyList<string> Errors) Snapshot()
    {
        lock (_gate)
        {
            return ([.. _messageIds], _idsTruncated, new Dictionary<string, long>(_targets, StringComparer.Ordinal), [.. _errors]);
        }
    }

    /// <summary>
    /// The distinct job ids of the selected messages, and whether some were left out (more than
    /// <see cref="MaxJobIdsKept"/>). Read once the walk has ended.
    /// </summary>
    public (IReadOnlyList<Guid> Ids, bool Partial) JobIds()
    {
        lock (_gate)
        {
            return ([.. _jobIds], _jobIdsPartial);
        }
    }

    /// <summary>
    /// Records a selected message (moved, purged, or for a dry run would be) under one lock: its id, its
    /// target, its job id. A message that names no job, or one whose header is not a UUID (no row could
    /// have that id), adds no job id: only a job that had a row can have lost it to retention.
    /// </summary>
    private void RecordId(FaultedMessage message, string? target)
    {
        var jobId = message.JobRowId;
        lock (_gate)
        {
            if (_messageIds.Count < plan.MessageIdLimit)
            {
                _messageIds.Add(message.MessageId is { } id ? AuditText.Escape(id) : "(no message id)");
            }
            else
            {
                _idsTruncated = true;
            }

            // A target comes from the message's MT-Fault-InputAddress header unless the request named one.
            if (target is not null && plan.Kind == ErrorQueueOperationKinds.Move)
            {
                var name = AuditText.Escape(target);
                _targets[name] = _targets.GetValueOrDefault(name) + 1;
            }

            if (jobId is { } job)
            {
                if (_jobIds.Count < MaxJobIdsKept)
                {
                    _jobIds.Add(job);
                }
                else if (!_jobIds.Contains(job))
                {
                    _jobIdsPartial = true;
                }
            }
        }
    }

    private void RecordError(string error)
    {
        lock (_gate)
        {
            if (_errors.Count < MaxErrorsKept && !_errors.Contains(error))
            {
                _errors.Add(error);
            }
        }
    }

    private sealed class Match
    {
        public static readonly Match Instance = new();
    }

    private sealed record Refused(string Reason);
}
