using RabbitMQ.Client;

namespace Conveyor.Api.ErrorQueues;

/// <summary>A message as <c>GET .../messages</c> shows it.</summary>
/// <param name="BodyTruncated">
/// Whether the body is longer than the preview's bytes: told from the body, not from the preview's text, which for a
/// body that is no UTF-8 holds a replacement character (three bytes) per byte.
/// </param>
public sealed record PeekedMessage(FaultedMessage Message, string BodyPreview, bool BodyTruncated);

/// <summary>Collects the first messages of a queue with a body preview; keeps every message.</summary>
public sealed class PeekVisitor(int limit, int previewBytes) : WalkVisitor
{
    private readonly List<PeekedMessage> _messages = [];

    public IReadOnlyList<PeekedMessage> Messages => _messages;

    public override bool IsDone => _messages.Count >= limit;

    public override object? Inspect(FaultedMessage message, IReadOnlyBasicProperties properties, ReadOnlyMemory<byte> body) =>
        new PeekedMessage(message, FaultedMessage.Preview(body.Span, previewBytes), body.Length > previewBytes);

    public override (WalkAction Action, ForwardCopy? Copy) Decide(FaultedMessage message, object? inspection)
    {
        if (_messages.Count < limit)
        {
            _messages.Add((PeekedMessage?)inspection ?? new PeekedMessage(message, "", message.BodyBytes > 0));
        }

        return (WalkAction.Keep, null);
    }
}

/// <summary>One group of faults with the same fingerprint.</summary>
public sealed class FaultGroup(string groupId, string? exceptionType, string normalisedMessage, string? exampleMessage)
{
    public const int SampleSize = 5;

    public string GroupId { get; } = groupId;

    public string? ExceptionType { get; } = exceptionType;

    public string NormalisedMessage { get; } = normalisedMessage;

    public string? ExampleMessage { get; } = exampleMessage;

    public long Count { get; private set; }

    public DateTimeOffset? FirstSeen { get; private set; }

    public DateTimeOffset? LastSeen { get; private set; }

    public SortedSet<string> MessageTypes { get; } = new(StringComparer.Ordinal);

    public List<string> SampleMessageIds { get; } = [];

    internal void Add(FaultedMessage message)
    {
        Count++;
        if (message.FaultedAt is { } at)
        {
            FirstSeen = FirstSeen is null || at < FirstSeen ? at : FirstSeen;
            LastSeen = LastSeen is null || at > LastSeen ? at : LastSeen;
        }

        if (message.MessageType is { } type && MessageTypes.Count < 20)
        {
            MessageTypes.Add(type);
        }

        if (message.MessageId is { } id && SampleMessageIds.Count < SampleSize)
        {
            SampleMessageIds.Add(id);
        }
    }
}

/// <summary>The groups of a read of an error queue, largest first, and the messages left out of them.</summary>
public sealed record FaultGroups(IReadOnlyList<FaultGroup> Groups, long Ungrouped);

/// <summary>
/// Groups messages by fault fingerprint; keeps every message, remembers no body. At most
/// <see cref="MaxGroups"/> groups: past that, a message of a new fingerprint is only counted
/// (<see cref="Ungrouped"/>), so memory and the answer stay bounded when fingerprints do not repeat.
/// </summary>
public sealed class GroupsVisitor : WalkVisitor
{
    public const int MaxGroups = 1_000;

    private readonly Dictionary<string, FaultGroup> _groups = new(StringComparer.Ordinal);

    public IEnumerable<FaultGroup> Groups => _groups.Values;

    /// <summary>Messages examined whose fingerprint found no group once <see cref="MaxGroups"/> existed.</summary>
    public long Ungrouped { get; private set; }

    public override object? Inspect(FaultedMessage message, IReadOnlyBasicProperties properties, ReadOnlyMemory<byte> body) => null;

    public override (WalkAction Action, ForwardCopy? Copy) Decide(FaultedMessage message, object? inspection)
    {
        var id = message.GroupId;
        if (!_groups.TryGetValue(id, out var group))
        {
            if (_groups.Count >= MaxGroups)
            {
                Ungrouped++;
                return (WalkAction.Keep, null);
            }

            var example = FaultedMessage.Cut(message.ExceptionMessage, 500);
            group = new FaultGroup(id, message.ExceptionType, FaultFingerprint.Normalise(message.ExceptionMessage), example);
            _groups[id] = group;
        }

        group.Add(message);
        return (WalkAction.Keep, null);
    }
}
