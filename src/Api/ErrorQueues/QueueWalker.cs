using System.Globalization;
using System.Threading.Channels;
using Conveyor.ServiceDefaults;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;

namespace Conveyor.Api.ErrorQueues;

/// <summary>What the walker does with one message a visitor has looked at.</summary>
public enum WalkAction
{
    /// <summary>Leave it: it is released with requeue at the end and keeps its place in the queue.</summary>
    Keep,

    /// <summary>Publish a copy (confirmed), then acknowledge the original.</summary>
    Forward,

    /// <summary>Acknowledge it: it leaves the queue.</summary>
    Remove,

    /// <summary>
    /// A dry run of <see cref="Forward"/>: keep it, publish nothing, but check that the copy's target
    /// exists, so the visitor hears what a forward would have done (<see cref="WalkOutcome.WouldForward"/>
    /// or <see cref="WalkOutcome.ForwardFailed"/>).
    /// </summary>
    CheckTarget,
}

/// <summary>How a forwarded or removed message ended.</summary>
public enum WalkOutcome
{
    Forwarded,
    ForwardFailed,
    Removed,

    /// <summary>Kept by a dry run; a forward would have been published to an existing queue.</summary>
    WouldForward,
}

/// <summary>A copy to publish: to <paramref name="Target"/> through the default exchange.</summary>
public sealed record ForwardCopy(string Target, BasicProperties Properties, ReadOnlyMemory<byte> Body)
{
    /// <summary>A dry run's copy (<see cref="WalkAction.CheckTarget"/>): only its target is used.</summary>
    public static ForwardCopy Unpublished(string target) => new(target, new BasicProperties(), ReadOnlyMemory<byte>.Empty);
}

/// <summary>
/// Decides the fate of each message of a walk. <see cref="Inspect"/> runs on the client's dispatch
/// threads (possibly on two channels at once) and must only read its arguments; the rest run one at
/// a time, in queue order, on the walk's own loop.
/// </summary>
public abstract class WalkVisitor
{
    /// <summary>
    /// Looks at a delivery while its body is valid; returns whatever <see cref="Decide"/> needs. Copy
    /// the body only for messages that will be forwarded: the others' bodies must not be kept.
    /// </summary>
    public abstract object? Inspect(FaultedMessage message, IReadOnlyBasicProperties properties, ReadOnlyMemory<byte> body);

    /// <summary>The action for the inspected message; for <see cref="WalkAction.Forward"/>, the copy to publish.</summary>
    public abstract (WalkAction Action, ForwardCopy? Copy) Decide(FaultedMessage message, object? inspection);

    public virtual void Completed(FaultedMessage message, WalkOutcome outcome, string? target, string? failure)
    {
    }

    /// <summary>True once the visitor needs no more messages (a limit was reached).</summary>
    public virtual bool IsDone => false;

    /// <summary>False for visitors that only read: no publishing channel is opened.</summary>
    public virtual bool Publishes => false;
}

/// <summary>Counters of a walk, readable while it runs.</summary>
public sealed class WalkProgress
{
    private long _examined;
    private long _peakHeldBytes;
    private long _unreadable;
    private string? _firstUnreadable;

    public long QueueDepthAtStart { get; internal set; }

    public long Examined => Interlocked.Read(ref _examined);

    /// <summary>
    /// The most body bytes of selected messages the walk held at once: copies read and not yet decided,
    /// plus copies awaiting their confirm (<see cref="ErrorQueueOptions.MaxPendingBytes"/>).
    /// </summary>
    public long PeakHeldBytes => Interlocked.Read(ref _peakHeldBytes);

    /// <summary>Messages that could not be read or decided on (an exception in reading them): each was kept in its place.</summary>
    public long Unreadable => Interlocked.Read(ref _unreadable);

    /// <summary>Why the first of the <see cref="Unreadable"/> messages could not be read: its id, the exception's type and message.</summary>
    public string? FirstUnreadable => Volatile.Read(ref _firstUnreadable);

    internal void CountExamined() => Interlocked.Increment(ref _examined);

    internal void CountUnreadable(string? messageId, Exception exception)
    {
        Interlocked.Increment(ref _unreadable);
        Interlocked.CompareExchange(
            ref _firstUnreadable,
            $"message {(string.IsNullOrEmpty(messageId) ? "without an id" : messageId)}: {exception.GetType().FullName}: {exception.Message}",
            null);
    }

    internal void NoteHeld(long bytes) => RaiseTo(ref _peakHeldBytes, bytes);

    /// <summary>Sets <paramref name="location"/> to <paramref name="value"/> if that is larger, whichever thread writes it too.</summary>
    internal static void RaiseTo(ref long location, long value)
    {
        var current = Interlocked.Read(ref location);
        while (value > current)
        {
            var seen = Interlocked.CompareExchange(ref location, value, current);
            if (seen == current)
            {
                return;
            }

            current = seen;
        }
    }
}

/// <summary>What a walk's settings are.</summary>
public sealed record WalkPlan(string Queue, long MaxExamine, ErrorQueueOptions Options);

/// <summary>
/// Takes the messages of one queue in order without losing or reordering any: consumes them with
/// manual acknowledgement on dedicated channels, lets a <see cref="WalkVisitor"/> decide each one,
/// acknowledges a forwarded original only after the broker confirmed its copy, and at the end
/// releases everything it kept with requeue, so those messages return to their original positions.
/// </summary>
/// <remarks>
/// <para>Consuming, not <c>basic.get</c>: one <c>basic.get</c> is a round trip per message, and measured
/// on the project's broker that moved about 1,300 messages/s against 2,800–3,300 for a consumer
/// with a prefetch window and confirm-batched acknowledgements (ADR 0002).</para>
/// <para>Kept messages stay unacknowledged until the end and so occupy the prefetch window. When
/// half the current channel's window is kept messages, the walker cancels its consumer (the kept
/// messages stay unacknowledged on that channel) and consumes on a fresh channel, whose window is
/// empty. Memory stays bounded: per kept message only a count; bodies only for selected messages,
/// read and not yet decided or awaiting their copy's confirm. RabbitMQ bounds a consumer's window by
/// messages, not bytes (it ignores <c>prefetch_size</c>), so a moving walk sizes each channel's window
/// from the largest message it has selected: at most <see cref="ErrorQueueOptions.MaxPendingBytes"/> of
/// them, and it starts on a window of <see cref="FirstMovingWindow"/> until it has seen some. When
/// the size it would choose now differs twofold from the current channel's, and that channel keeps no
/// message, it moves to a channel with that window, so bodies held stay near <c>MaxPendingBytes</c> for a
/// move of large messages instead of <c>Prefetch</c> times their size. A channel opened because kept
/// messages filled the last one has the full window, as before: a smaller one would leave a walk
/// fewer messages it may pass over (<see cref="ErrorQueueOptions.MaxChannels"/>).</para>
/// <para>Confirms are tracked here, not by the client library: each copy carries its publish
/// sequence number (the header the library itself uses, so a <c>basic.return</c> names the copy it
/// returns), and one event loop reads deliveries, confirms, returns and channel closures in the order
/// they arrived. The library's own tracking costs a task, a dictionary entry and a thread-pool
/// continuation per message and copies its whole table of outstanding confirms on every
/// <c>multiple</c> confirm; on a two-core machine shared with the broker that CPU came straight out
/// of the broker's share (ADR 0002).</para>
/// <para>At most <see cref="WalkPlan.MaxExamine"/> messages are examined (the depth at the start), so
/// messages that fail again during a move, or arrive later, are left for the next walk.</para>
/// <para>A crash at any point leaves unacknowledged originals, which the broker requeues when the
/// connection closes: at worst a message exists in both queues; the consumers' inbox makes that
/// harmless.</para>
/// </remarks>
public sealed class QueueWalker
{
    /// <summary>The header carrying a copy's publish sequence number; the client library's own name for it.</summary>
    public const string SequenceHeader = Constants.PublishSequenceNumberHeader;

    /// <summary>Idle checks in a row, with messages ready that never arrive, before a walk gives up.</summary>
    private const int MaxIdleChecks = 30;

    /// <summary>
    /// The window of a moving walk's first channel, before it has seen a message's size: a queue of
    /// messages of several MiB holds this many of them in memory at most before the window shrinks.
    /// </summary>
    public const int FirstMovingWindow = 16;

    private readonly IConnection _connection;
    private readonly WalkPlan _plan;
    private readonly WalkVisitor _visitor;
    private readonly WalkProgress _progress;
    private readonly TimeProvider _time;
    private readonly Channel<WalkEvent> _events = Channel.CreateUnbounded<WalkEvent>(new UnboundedChannelOptions { SingleReader = true });

    /// <summary>Deliveries read while waiting for confirms; they are decided before anything newer.</summary>
    private readonly Queue<WalkEvent> _deferred = new();
    private readonly List<Lane> _lanes = [];
    private readonly ConfirmWindow _window = new();
    private readonly List<Forwarded> _run = [];

    /// <summary>A dry run's targets, checked once each: null when the queue exists, else why a copy would fail.</summary>
    private readonly Dictionary<string, string?> _targetProblems = new(StringComparer.Ordinal);
    /// <summary>The most a channel's window may be: <see cref="ErrorQueueOptions.Prefetch"/>, or the messages to examine when fewer.</summary>
    private ushort _prefetch = 1;

    /// <summary>The largest body of a message this walk selected (written by the dispatch thread).</summary>
    private long _largestSelected;

    /// <summary>Whether any message was delivered to this walk yet (written by the dispatch thread).</summary>
    private volatile bool _delivered;

    /// <summary>Body bytes of selected deliveries read and not yet decided (written by both threads).</summary>
    private long _undecidedBytes;

    /// <summary>The current channel stopped consuming to be replaced by one with another window (<see cref="ShouldResize"/>).</summary>
    private bool _resizing;
    private Lane? _current;
    private IChannel? _publisher;
    private bool _closingPublisher;

    /// <summary>Set when a return cannot be matched to its copy: from then on no original is acknowledged.</summary>
    private bool _settlingStopped;
    private string? _publisherClosed;
    private CancellationTokenSource? _waitTimer;

    /// <summary>
    /// Set when the broker stopped answering (no confirm, a write that never drained, no reply at the end):
    /// the walk then ends without waiting for anything more and drops its connection.
    /// </summary>
    private string? _stuck;

    /// <summary>Why the broker blocked this connection (<c>connection.blocked</c>: a memory or disk alarm), while it does.</summary>
    private volatile string? _blocked;
    private long _actions;
    private long _rateStart;
    private long? _left;

    public QueueWalker(IConnection connection, WalkPlan plan, WalkVisitor visitor, WalkProgress progress, TimeProvider? time = null)
    {
        _connection = connection;
        _plan = plan;
        _visitor = visitor;
        _progress = progress;
        _time = time ?? TimeProvider.System;
    }

    /// <summary>Why the walk stopped before examining every message it meant to.</summary>
    public string? StoppedEarly { get; private set; }

    /// <summary>Walks the queue; returns the number of messages in it afterwards.</summary>
    public async Task<long> RunAsync(CancellationToken cancellationToken)
    {
        _connection.ConnectionBlockedAsync += OnBlockedAsync;
        _connection.ConnectionUnblockedAsync += OnUnblockedAsync;
        try
        {
            return await WalkAsync(cancellationToken);
        }
        finally
        {
            _connection.ConnectionBlockedAsync -= OnBlockedAsync;
            _connection.ConnectionUnblockedAsync -= OnUnblockedAsync;
        }
    }

    private Task OnBlockedAsync(object sender, ConnectionBlockedEventArgs args)
    {
        _blocked = args.Reason;
        return Task.CompletedTask;
    }

    private Task OnUnblockedAsync(object sender, AsyncEventArgs args)
    {
        _blocked = null;
        return Task.CompletedTask;
    }

    private async Task<long> WalkAsync(CancellationToken cancellationToken)
    {
        var depth = await ReadyCountAsync(cancellationToken) ?? throw new QueueNotFoundException(_plan.Queue);
        _progress.QueueDepthAtStart = depth;
        var limit = Math.Min(depth, _plan.MaxExamine);
        if (limit > 0)
        {
            _prefetch = (ushort)Math.Clamp(Math.Min(_plan.Options.Prefetch, limit), 1, ushort.MaxValue);
            try
            {
                if (_visitor.Publishes)
                {
                    await OpenPublisherAsync(cancellationToken);
                }

                _rateStart = _time.GetTimestamp();
                await StartLaneAsync(cancellationToken);
                await LoopAsync(limit, cancellationToken);
            }
            catch (Exception exception) when (exception is TimeoutException || (exception is OperationCanceledException && !cancellationToken.IsCancellationRequested))
            {
                // A request the broker left unanswered for the client's continuation timeout.
                throw Stuck($"The broker did not answer a request in time ({exception.Message})");
            }
            finally
            {
                await FinishAsync();
            }
        }

        if (_stuck is not null)
        {
            // The walk itself ended, but the broker stopped answering at its end: the counts are not known.
            throw new WalkInterruptedException(_stuck);
        }

        return _left ?? await ReadyCountAsync(CancellationToken.None) ?? 0;
    }

    private async Task LoopAsync(long limit, CancellationToken cancellationToken)
    {
        var idleChecks = 0;
        while (_progress.Examined < limit && !_visitor.IsDone)
        {
            // The current channel's window is (nearly) full of kept messages and more are to come.
            if (!_resizing && _current!.Kept >= _current.RotateAt && limit - _progress.Examined > _current.Prefetch - _current.Kept)
            {
                if (_lanes.Count >= _plan.Options.MaxChannels)
                {
                    StoppedEarly = $"Passed over the most messages one walk may leave behind ({_lanes.Count} channels); run the operation again with a narrower filter or after this one.";
                    return;
                }

                await RotateAsync(cancellationToken);
            }
            else if (ShouldResize(limit))
            {
                // The new window starts once what the current one delivered is decided, so the two never add up.
                await StopConsumingAsync(_current!, cancellationToken);
                _resizing = true;
            }

            if (!TryTakeDelivery(out var item))
            {
                if (_resizing)
                {
                    _resizing = false;
                    await StartLaneAsync(cancellationToken);
                    continue;
                }

                await SettleAsync();
                if (await WaitForEventAsync(TimeSpan.FromMilliseconds(_plan.Options.IdleCheckMilliseconds), cancellationToken))
                {
                    idleChecks = 0;
                    continue;
                }

                // Idle. Nothing ready means someone else took the rest or it expired; something ready
                // that never arrives (another exclusive consumer) must not hold the walk forever.
                if (await ReadyCountAsync(cancellationToken) is null or 0 || ++idleChecks >= MaxIdleChecks)
                {
                    StoppedEarly = "No more messages arrived from the queue before the expected count was reached.";
                    return;
                }

                continue;
            }

            _progress.CountExamined();
            var lane = item.Lane!;
            if (item.Inspection is ForwardCopy { Body.Length: > 0 } taken)
            {
                Interlocked.Add(ref _undecidedBytes, -taken.Body.Length);
            }

            var (action, copy) = item.Message is null
                ? (WalkAction.Keep, null)
                : _visitor.Decide(item.Message, item.Inspection);
            switch (action)
            {
                case WalkAction.Forward when copy is not null && _publisher is not null:
                    await PaceAsync(lane, item.Message!, copy.Target, cancellationToken);
                    await ForwardAsync(lane, item.Tag, item.Message!, copy);
                    await WaitForRoomAsync(cancellationToken);
                    break;

                case WalkAction.CheckTarget when copy is not null:
                    lane.Kept++;
                    await CheckTargetAsync(item.Message!, copy.Target, cancellationToken);
                    break;

                case WalkAction.Remove:
                    await PaceAsync(lane, item.Message!, null, cancellationToken);
                    try
                    {
                        await BoundedAsync(lane.Channel.BasicAckAsync(item.Tag, multiple: false, CancellationToken.None), "acknowledgement");
                    }
                    catch (Exception)
                    {
                        lane.Kept++;
                        _visitor.Completed(item.Message!, WalkOutcome.ForwardFailed, null, "Not removed: its acknowledgement could not be sent.");
                        throw;
                    }

                    lane.Acked++;
                    _visitor.Completed(item.Message!, WalkOutcome.Removed, null, null);
                    break;

                default:
                    lane.Kept++;
                    break;
            }

            // Acknowledge as confirms arrive, so the broker keeps the window full instead of stopping
            // and starting a window at a time.
            if (_window.HeadResolved)
            {
                await SettleAsync();
            }
        }
    }

    /// <summary>Publishes a copy; its original waits in the window for the copy's confirm.</summary>
    private async Task ForwardAsync(Lane lane, ulong tag, FaultedMessage message, ForwardCopy copy)
    {
        var publisher = _publisher!;
        try
        {
            var sequence = await publisher.GetNextPublishSequenceNumberAsync(CancellationToken.None);
            if (_window.Count > 0 && sequence != _window.NextSequence)
            {
                // Never guess which copy a confirm is for.
                lane.Kept++;
                _visitor.Completed(message, WalkOutcome.ForwardFailed, copy.Target, "Not published: publish sequence out of step.");
                throw new WalkInterruptedException($"Publish sequence {sequence} out of step (expected {_window.NextSequence}); stopped.");
            }

            var headers = copy.Properties.Headers ??= new Dictionary<string, object?>(StringComparer.Ordinal);
            headers[SequenceHeader] = (long)sequence;
            await BoundedAsync(publisher.BasicPublishAsync(string.Empty, copy.Target, mandatory: true, copy.Properties, copy.Body, CancellationToken.None), "publish");
            _window.Add(sequence, new Forwarded(lane, tag, message, copy.Target, copy.Body.Length));
            _progress.NoteHeld(_window.Bytes + Interlocked.Read(ref _undecidedBytes));
        }
        catch (WalkInterruptedException) when (_stuck is not null)
        {
            // The copy may still leave if the broker reads again: a duplicate at worst, its original stays.
            lane.Kept++;
            _visitor.Completed(message, WalkOutcome.ForwardFailed, copy.Target, "Not confirmed: the broker stopped taking publishes.");
            throw;
        }
        catch (Exception exception) when (exception is not WalkInterruptedException)
        {
            // Not published: the original stays.
            lane.Kept++;
            _visitor.Completed(message, WalkOutcome.ForwardFailed, copy.Target, exception.Message);
            if (!publisher.IsOpen)
            {
                throw new WalkInterruptedException($"The broker closed the publishing channel of the walk: {_publisherClosed ?? exception.Message}");
            }
        }
    }

    /// <summary>
    /// Waits while the copies awaiting a confirm fill the window or the byte budget. Deliveries read
    /// meanwhile wait their turn. No confirm within the timeout ends the walk: a broker that confirms
    /// nothing for that long has stopped (a memory or disk alarm blocks publishers until an operator
    /// acts), and waiting that long again for each copy in the window would hold the operation for hours.
    /// The originals stay (the connection is dropped, so the broker requeues them), and a copy may still
    /// arrive, which leaves a duplicate, never a loss.
    /// </summary>
    private async Task WaitForRoomAsync(CancellationToken cancellationToken)
    {
        while (_window.Count >= _current!.Prefetch || _window.Bytes >= _plan.Options.MaxPendingBytes)
        {
            if (_window.HeadResolved)
            {
                await SettleAsync();
            }
            else if (!DrainControlEvents() && !await WaitForEventAsync(ConfirmTimeout, cancellationToken))
            {
                throw Stuck($"The broker confirmed no copy for {_plan.Options.ConfirmTimeoutSeconds} s");
            }
        }
    }

    private TimeSpan ConfirmTimeout => TimeSpan.FromSeconds(_plan.Options.ConfirmTimeoutSeconds);

    /// <summary>
    /// Awaits a write to the broker (a publish, an acknowledgement) for at most the confirm timeout. A write
    /// completes at once unless the client's outgoing buffers are full, which happens only when the broker
    /// stopped reading: then the walk is stuck and ends. No timer is armed on the fast path.
    /// </summary>
    private async ValueTask BoundedAsync(ValueTask write, string what)
    {
        if (write.IsCompleted)
        {
            await write;
            return;
        }

        var pending = write.AsTask();
        try
        {
            await pending.WaitAsync(ConfirmTimeout);
        }
        catch (TimeoutException)
        {
            // It ends with the connection the walk drops.
            pending.Abandon();
            throw Stuck($"The broker took no {what} for {_plan.Options.ConfirmTimeoutSeconds} s");
        }
    }

    /// <summary>Records that the broker stopped answering (the first reason stays), naming the alarm when the broker gave one.</summary>
    private string MarkStuck(string what) =>
        _stuck ??= $"{what}{BlockedText}; stopped. Messages not yet moved or purged stayed in the queue.";

    /// <summary>Records that the broker stopped answering and says so.</summary>
    private WalkInterruptedException Stuck(string what) => new(MarkStuck(what));

    private string? BlockedText => _blocked is { } reason ? $" (RabbitMQ blocked the connection: {reason})" : null;

    /// <summary>The next delivery to decide; confirms and returns read on the way are applied.</summary>
    private bool TryTakeDelivery(out WalkEvent delivery)
    {
        if (_deferred.TryDequeue(out delivery))
        {
            return true;
        }

        while (_events.Reader.TryRead(out delivery))
        {
            if (delivery.Kind == WalkEventKind.Delivery)
            {
                return true;
            }

            Apply(delivery);
        }

        return false;
    }

    /// <summary>Applies every event already arrived, putting deliveries aside; false when there was none.</summary>
    private bool DrainControlEvents()
    {
        var any = false;
        while (_events.Reader.TryRead(out var item))
        {
            any = true;
            if (item.Kind == WalkEventKind.Delivery)
            {
                _deferred.Enqueue(item);
            }
            else
            {
                Apply(item);
            }
        }

        return any;
    }

    private void Apply(WalkEvent item)
    {
        switch (item.Kind)
        {
            case WalkEventKind.Ack:
                _window.Confirm(item.Tag, item.Multiple);
                break;
            case WalkEventKind.Nack:
                _window.Fail(item.Tag, item.Multiple, "The broker refused the copy (nack).");
                break;
            case WalkEventKind.Return:
                // The broker sends a return before the confirm of the same copy; the failure sticks.
                _window.Return(item.Tag, item.Text!);
                break;
            case WalkEventKind.UnknownReturn:
                // Some copy went nowhere and nothing says which: acknowledge no more originals.
                _settlingStopped = true;
                throw new WalkInterruptedException($"The broker returned a copy that carries no publish sequence number: {item.Text}");
            case WalkEventKind.PublisherClosed:
                throw new WalkInterruptedException($"The broker closed the publishing channel of the walk: {item.Text}");
            case WalkEventKind.LaneClosed:
                throw new WalkInterruptedException($"The broker closed a channel of the walk: {item.Text}");
        }
    }

    /// <summary>
    /// Acknowledges the originals whose copies are confirmed, oldest first, and keeps those whose
    /// copies failed. A run of confirmed originals on a lane that keeps no message is acknowledged
    /// with one <c>multiple</c> ack; otherwise each alone, since <c>multiple</c> would also take the
    /// kept messages with lower delivery tags.
    /// </summary>
    private async Task SettleAsync()
    {
        if (_settlingStopped)
        {
            return;
        }

        while (_window.TryTakeResolved(out var forwarded, out var failure))
        {
            if (failure is not null)
            {
                await AckRunAsync();
                forwarded.Lane.Kept++;
                _visitor.Completed(forwarded.Message, WalkOutcome.ForwardFailed, forwarded.Target, failure);
            }
            else if (forwarded.Lane.Kept > 0)
            {
                await AckRunAsync();
                try
                {
                    await BoundedAsync(forwarded.Lane.Channel.BasicAckAsync(forwarded.Tag, multiple: false, CancellationToken.None), "acknowledgement");
                }
                catch (Exception)
                {
                    AckFailed(forwarded);
                    throw;
                }

                forwarded.Lane.Acked++;
                _visitor.Completed(forwarded.Message, WalkOutcome.Forwarded, forwarded.Target, null);
            }
            else
            {
                if (_run.Count > 0 && _run[^1].Lane != forwarded.Lane)
                {
                    await AckRunAsync();
                }

                _run.Add(forwarded);
            }
        }

        await AckRunAsync();
    }

    private async Task AckRunAsync()
    {
        if (_run.Count == 0)
        {
            return;
        }

        var lane = _run[^1].Lane;
        try
        {
            await BoundedAsync(lane.Channel.BasicAckAsync(_run[^1].Tag, multiple: true, CancellationToken.None), "acknowledgement");
        }
        catch (Exception)
        {
            foreach (var forwarded in _run)
            {
                AckFailed(forwarded);
            }

            _run.Clear();
            throw;
        }

        lane.Acked += _run.Count;
        foreach (var forwarded in _run)
        {
            _visitor.Completed(forwarded.Message, WalkOutcome.Forwarded, forwarded.Target, null);
        }

        _run.Clear();
    }

    /// <summary>
    /// A copy was confirmed but its original's acknowledgement could not be sent: the original stays (or
    /// returns) and the copy is in its target too, a duplicate the consumers' inbox makes harmless. Recorded,
    /// so the audit and the counts still account for it.
    /// </summary>
    private void AckFailed(Forwarded forwarded)
    {
        forwarded.Lane.Kept++;
        _visitor.Completed(forwarded.Message, WalkOutcome.ForwardFailed, forwarded.Target,
            "The copy was confirmed, but the original could not be acknowledged: it stays in the queue as well.");
    }

    /// <summary>Waits for the next event, up to a timeout; false = none came.</summary>
    private async Task<bool> WaitForEventAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        // One timer for many waits: re-armed each time, replaced only after it fired.
        var timer = _waitTimer ??= CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timer.CancelAfter(timeout);
        try
        {
            var more = await _events.Reader.WaitToReadAsync(timer.Token);
            if (!timer.TryReset())
            {
                timer.Dispose();
                _waitTimer = null;
            }

            return more;
        }
        catch (OperationCanceledException)
        {
            timer.Dispose();
            _waitTimer = null;
            cancellationToken.ThrowIfCancellationRequested();
            return false;
        }
    }

    /// <summary>
    /// Paces the action on one message. Cancelled during the pause, the message is left as it is and
    /// recorded as not done, so the counts still add up (every match is moved, purged or failed).
    /// </summary>
    private async Task PaceAsync(Lane lane, FaultedMessage message, string? target, CancellationToken cancellationToken)
    {
        try
        {
            await PaceAsync(cancellationToken);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            lane.Kept++;
            _visitor.Completed(message, WalkOutcome.ForwardFailed, target, "Not done: the operation was cancelled while it waited for its turn (MaxMessagesPerSecond).");
            throw;
        }
    }

    private async Task PaceAsync(CancellationToken cancellationToken)
    {
        var rate = _plan.Options.MaxMessagesPerSecond;
        if (rate <= 0)
        {
            return;
        }

        var due = TimeSpan.FromSeconds(_actions++ / (double)rate) - _time.GetElapsedTime(_rateStart);
        if (due >= TimeSpan.FromMilliseconds(10))
        {
            DrainControlEvents();
            await SettleAsync();
            await Task.Delay(due, _time, cancellationToken);
        }
    }

    private async Task OpenPublisherAsync(CancellationToken cancellationToken)
    {
        _publisher = await _connection.CreateChannelAsync(
            new CreateChannelOptions(publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: false),
            cancellationToken);

        // These run on the client's reader loop: hand over and return.
        _publisher.BasicAcksAsync += (_, args) =>
        {
            _events.Writer.TryWrite(WalkEvent.Confirm(WalkEventKind.Ack, args.DeliveryTag, args.Multiple));
            return Task.CompletedTask;
        };
        _publisher.BasicNacksAsync += (_, args) =>
        {
            _events.Writer.TryWrite(WalkEvent.Confirm(WalkEventKind.Nack, args.DeliveryTag, args.Multiple));
            return Task.CompletedTask;
        };
        _publisher.BasicReturnAsync += (_, args) =>
        {
            var sequence = SequenceOf(args.BasicProperties.Headers);
            var reason = $"The broker returned the copy: {args.ReplyText} (no queue '{args.RoutingKey}'?)";
            _events.Writer.TryWrite(sequence is { } known
                ? WalkEvent.Returned(known, reason)
                : WalkEvent.Closed(WalkEventKind.UnknownReturn, null, reason));
            return Task.CompletedTask;
        };
        _publisher.ChannelShutdownAsync += (_, args) =>
        {
            _publisherClosed = args.ReplyText;
            if (!_closingPublisher)
            {
                _events.Writer.TryWrite(WalkEvent.Closed(WalkEventKind.PublisherClosed, null, args.ReplyText));
            }

            return Task.CompletedTask;
        };
    }

    private static ulong? SequenceOf(IDictionary<string, object?>? headers) =>
        headers is not null && headers.TryGetValue(SequenceHeader, out var value)
            ? value switch
            {
                long number when number > 0 => (ulong)number,
                int number when number > 0 => (ulong)number,
                byte[] text when ulong.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var number) => number,
                string text when ulong.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var number) => number,
                _ => null,
            }
            : null;

    private async Task StartLaneAsync(CancellationToken cancellationToken, bool fullWindow = false)
    {
        var channel = await _connection.CreateChannelAsync(cancellationToken: cancellationToken);
        var prefetch = fullWindow ? _prefetch : WindowForNextChannel();
        // A walk that forwards needs room in the window for copies awaiting their confirm.
        var lane = new Lane(channel, prefetch, _visitor.Publishes ? Math.Max(1, prefetch / 2) : prefetch, fullWindow);
        _lanes.Add(lane);
        channel.ChannelShutdownAsync += (_, args) =>
        {
            if (!lane.ClosingByUs)
            {
                _events.Writer.TryWrite(WalkEvent.Closed(WalkEventKind.LaneClosed, lane, args.ReplyText));
            }

            return Task.CompletedTask;
        };

        await channel.BasicQosAsync(0, prefetch, global: false, cancellationToken);
        var consumer = new AsyncEventingBasicConsumer(channel);
        consumer.ReceivedAsync += (_, delivery) =>
        {
            FaultedMessage? message = null;
            object? inspection = null;
            try
            {
                message = FaultedMessage.Read(delivery.BasicProperties, delivery.Body.Span);
                inspection = _visitor.Inspect(message, delivery.BasicProperties, delivery.Body);
                if (inspection is ForwardCopy { Body.Length: > 0 } copy)
                {
                    WalkProgress.RaiseTo(ref _largestSelected, copy.Body.Length);
                    _progress.NoteHeld(Interlocked.Add(ref _undecidedBytes, copy.Body.Length) + _window.Bytes);
                }
            }
            catch (Exception exception)
            {
                // Unreadable: examined and kept, and reported with the walk's result.
                message = null;
                _progress.CountUnreadable(delivery.BasicProperties.MessageId, exception);
            }

            _delivered = true;
            Interlocked.Increment(ref lane.Delivered);
            _events.Writer.TryWrite(WalkEvent.Delivery(lane, delivery.DeliveryTag, message, inspection));
            return Task.CompletedTask;
        };
        consumer.UnregisteredAsync += (_, _) =>
        {
            lane.Unregistered.TrySetResult();
            return Task.CompletedTask;
        };
        lane.ConsumerTag = await channel.BasicConsumeAsync(_plan.Queue, autoAck: false, consumer, cancellationToken);
        _current = lane;
    }

    /// <summary>
    /// The window of the next channel. A walk that only reads (an inspection, a purge) holds no bodies:
    /// <see cref="_prefetch"/>. A moving walk holds the body of each selected message until its copy is
    /// confirmed: <see cref="ErrorQueueOptions.MaxPendingBytes"/> divided by the largest selected message,
    /// at least 1, at most <see cref="_prefetch"/>; <see cref="FirstMovingWindow"/> before any message came,
    /// and <see cref="_prefetch"/> while none came that it selects (a message it leaves holds no body).
    /// </summary>
    private ushort WindowForNextChannel()
    {
        if (!_visitor.Publishes)
        {
            return _prefetch;
        }

        var largest = Interlocked.Read(ref _largestSelected);
        var window = largest > 0 ? _plan.Options.MaxPendingBytes / largest
            : _delivered ? _prefetch
            : FirstMovingWindow;
        return (ushort)Math.Clamp(window, 1, _prefetch);
    }

    /// <summary>
    /// Whether a moving walk should go on with a channel of another window: the one it would choose now is
    /// at most half the current (a larger message came), or at least twice it once the current channel
    /// has delivered a full window (the first channel's sizes were seen). Only on a channel opened with a
    /// sized window that keeps no message yet: one that keeps messages moves on by <see cref="RotateAsync"/>,
    /// to a full window, which stays. A channel fewer than the most allowed is kept for messages left
    /// behind; more messages must be coming.
    /// </summary>
    private bool ShouldResize(long limit)
    {
        var current = _current!;
        if (!_visitor.Publishes || _resizing || current.FullWindow || current.Kept > 0 || _lanes.Count >= _plan.Options.MaxChannels - 1
            || limit - _progress.Examined <= current.Prefetch)
        {
            return false;
        }

        var next = WindowForNextChannel();
        return next * 2 <= current.Prefetch
            || (next >= current.Prefetch * 2 && Volatile.Read(ref current.Delivered) >= current.Prefetch);
    }

    /// <summary>
    /// Stops the current channel's consumer (its kept messages stay unacknowledged) and consumes on a new
    /// channel with the full window: a channel passes over half its window of kept messages, and
    /// <see cref="ErrorQueueOptions.MaxChannels"/> of them bound how many one walk may leave behind, so a
    /// window sized for large selected messages would leave it few.
    /// </summary>
    private async Task RotateAsync(CancellationToken cancellationToken)
    {
        await StopConsumingAsync(_current!, cancellationToken);
        await StartLaneAsync(cancellationToken, fullWindow: true);
    }

    /// <summary>
    /// Cancels a lane's consumer and waits until the client has handed over every delivery that
    /// preceded the cancel-ok, so messages are still decided in queue order.
    /// </summary>
    private static async Task StopConsumingAsync(Lane lane, CancellationToken cancellationToken)
    {
        if (lane.ConsumerTag is null || !lane.Channel.IsOpen)
        {
            return;
        }

        await lane.Channel.BasicCancelAsync(lane.ConsumerTag, noWait: false, cancellationToken);
        await WaitQuietlyAsync(lane.Unregistered.Task, TimeSpan.FromSeconds(10), CancellationToken.None);
        lane.ConsumerTag = null;
    }

    /// <summary>
    /// Ends the walk whatever happened: stop consuming, settle what was confirmed (waiting a while for
    /// outstanding confirms), and release every message still unacknowledged with requeue. Runs
    /// without the caller's cancellation token: a shutdown must still end the walk cleanly (a failure
    /// here is still safe: closing the channels requeues all). Each step waits for the broker at most
    /// the confirm timeout; once the broker stopped answering, the rest is skipped and the connection
    /// is dropped instead, which requeues the same messages.
    /// </summary>
    private async Task FinishAsync()
    {
        foreach (var lane in _lanes)
        {
            await StepAsync(token => StopConsumingAsync(lane, token));
        }

        await StepAsync(_ => SettleAllAsync(), ConfirmTimeout * 2);

        // What stays: the ready messages plus those this walk still holds, which the release below
        // requeues (counted now: the broker applies a release asynchronously).
        await StepAsync(async token => _left = await ReadyCountAsync(token) + _lanes.Sum(l => (long)Volatile.Read(ref l.Delivered) - l.Acked));
        foreach (var lane in _lanes)
        {
            lane.ClosingByUs = true;
            await StepAsync(async token =>
            {
                if (lane.Channel.IsOpen)
                {
                    // Tag 0 with multiple: every message still unacknowledged on this channel.
                    await lane.Channel.BasicNackAsync(0, multiple: true, requeue: true, token);
                    await lane.Channel.CloseAsync(token);
                }
            });
        }

        if (_publisher is not null)
        {
            _closingPublisher = true;
            await StepAsync(token => _publisher.CloseAsync(token));
        }

        if (_stuck is not null)
        {
            _left = null;
            await AbandonConnectionAsync();
        }

        FailUnsettled();
        foreach (var lane in _lanes)
        {
            await TryAsync(() => lane.Channel.DisposeAsync().AsTask().WaitAsync(ConfirmTimeout));
        }

        if (_publisher is not null)
        {
            await TryAsync(() => _publisher.DisposeAsync().AsTask().WaitAsync(ConfirmTimeout));
        }

        _waitTimer?.Dispose();
        _events.Writer.TryComplete();
    }

    /// <summary>
    /// Runs one step of the end of a walk, unless the broker already stopped answering. A step the broker
    /// leaves unanswered for <paramref name="budget"/> (the confirm timeout by default) marks the walk stuck.
    /// Other failures are ignored: what is left unacknowledged is requeued when the channels close.
    /// </summary>
    private async Task StepAsync(Func<CancellationToken, Task> step, TimeSpan? budget = null)
    {
        if (_stuck is not null)
        {
            return;
        }

        var wait = budget ?? ConfirmTimeout;
        using var timeout = new CancellationTokenSource(wait);
        Task? running = null;
        try
        {
            running = step(timeout.Token);
            await running.WaitAsync(wait + TimeSpan.FromSeconds(1));
        }
        catch (Exception exception) when (exception is TimeoutException || timeout.IsCancellationRequested)
        {
            MarkStuck($"The broker did not answer within {wait.TotalSeconds:0} s at the end of the walk");
            running?.Abandon();
        }
        catch (Exception)
        {
            // Best effort at the end of a walk: whatever is still unacknowledged is requeued by the
            // broker when the channel or connection closes. A stuck broker is recorded by now.
        }
    }

    /// <summary>
    /// Drops the connection of a walk whose broker stopped answering: the broker requeues what the walk had
    /// not acknowledged once it sees the connection go. Not awaited beyond a few seconds: a close that cannot
    /// even be written (the client's buffers full) completes when the broker reads again.
    /// </summary>
    private async Task AbandonConnectionAsync()
    {
        var closing = _connection.CloseAsync(Constants.ConnectionForced, "Conveyor gave up on a broker that stopped answering", TimeSpan.FromSeconds(2), abort: true, CancellationToken.None);
        try
        {
            await closing.WaitAsync(TimeSpan.FromSeconds(5));
        }
        catch (Exception)
        {
            closing.Abandon();
        }
    }

    /// <summary>Waits for the outstanding confirms (up to the confirm timeout), then settles.</summary>
    private async Task SettleAllAsync()
    {
        // The loop's timer may be linked to a cancelled token; the end of a walk waits on its own.
        _waitTimer?.Dispose();
        _waitTimer = null;
        var deadline = _time.GetTimestamp();
        while (_window.Count > 0)
        {
            try
            {
                DrainControlEvents();
            }
            catch (WalkInterruptedException)
            {
                // A closed channel: what is confirmed is settled below, the rest stays.
            }

            await SettleAsync();
            var left = ConfirmTimeout - _time.GetElapsedTime(deadline);
            if (_window.Count == 0 || _settlingStopped || _publisher is not { IsOpen: true } || left <= TimeSpan.Zero)
            {
                break;
            }

            await WaitForEventAsync(left, CancellationToken.None);
        }
    }

    /// <summary>Counts every copy still unsettled as failed: its original stays in (or returns to) the queue.</summary>
    private void FailUnsettled()
    {
        while (_window.Count > 0)
        {
            var forwarded = _window.TakeHead();
            forwarded.Lane.Kept++;
            _visitor.Completed(forwarded.Message, WalkOutcome.ForwardFailed, forwarded.Target, _settlingStopped
                ? "Not acknowledged: a copy came back from the broker that could not be told apart."
                : _stuck is not null
                    ? "Not acknowledged: the broker stopped answering."
                    : _publisherClosed is { } reason
                        ? $"The publishing channel closed before the copy was confirmed: {reason}"
                        : "The broker did not confirm the copy in time.");
        }
    }

    /// <summary>
    /// A dry run's match: would it move, or why not. A check that throws (cancelled, the connection lost) still
    /// accounts for the match, as failed with the reason, so a dry run's matches are its would-moves and its failures.
    /// </summary>
    private async Task CheckTargetAsync(FaultedMessage message, string target, CancellationToken cancellationToken)
    {
        string? problem;
        try
        {
            problem = await TargetProblemAsync(target, cancellationToken);
        }
        catch (Exception)
        {
            _visitor.Completed(message, WalkOutcome.ForwardFailed, target, "Not checked: the walk stopped before it could look up the target queue.");
            throw;
        }

        _visitor.Completed(message, problem is null ? WalkOutcome.WouldForward : WalkOutcome.ForwardFailed, target, problem);
    }

    /// <summary>
    /// Why a copy to <paramref name="target"/> would fail, or null when it would be routed: a real move's
    /// copy to a missing queue comes back from the broker (<c>mandatory</c>), so a dry run says the same.
    /// </summary>
    private async Task<string?> TargetProblemAsync(string target, CancellationToken cancellationToken)
    {
        if (!_targetProblems.TryGetValue(target, out var problem))
        {
            try
            {
                problem = await ReadyCountAsync(target, cancellationToken) is null
                    ? $"The copy would come back from the broker: there is no queue '{target}'."
                    : null;
            }
            catch (Exception exception) when (exception is not OperationCanceledException && _connection.IsOpen)
            {
                // The broker refused to look the queue up (a name it does not accept): a publish would fail too.
                problem = $"The copy would not be published to '{target}': {exception.Message}";
            }

            _targetProblems[target] = problem;
        }

        return problem;
    }

    /// <summary>Ready messages in the walked queue; null when it does not exist.</summary>
    private Task<long?> ReadyCountAsync(CancellationToken cancellationToken) => ReadyCountAsync(_plan.Queue, cancellationToken);

    /// <summary>Ready messages in a queue; null when the queue does not exist.</summary>
    private async Task<long?> ReadyCountAsync(string queue, CancellationToken cancellationToken)
    {
        // A passive declare of a missing queue closes its channel, hence a channel of its own.
        await using var probe = await _connection.CreateChannelAsync(cancellationToken: cancellationToken);
        return (await probe.DeclarePassiveIfExistsAsync(queue, cancellationToken))?.MessageCount;
    }

    /// <summary>Waits for a task to end, up to a timeout; the caller looks at its state. Only cancellation throws.</summary>
    private static async Task WaitQuietlyAsync(Task task, TimeSpan timeout, CancellationToken cancellationToken)
    {
        try
        {
            await task.WaitAsync(timeout, cancellationToken);
        }
        catch (Exception) when (!cancellationToken.IsCancellationRequested)
        {
            // Faulted or timed out.
        }
    }

    private static async Task TryAsync(Func<Task> action)
    {
        try
        {
            await action();
        }
        catch (Exception)
        {
            // Best effort at the end of a walk: whatever is still unacknowledged is requeued by the
            // broker when the channel or connection closes.
        }
    }

    private sealed class Lane(IChannel channel, ushort prefetch, int rotateAt, bool fullWindow)
    {
        public IChannel Channel { get; } = channel;

        /// <summary>This channel's consumer window (<c>basic.qos</c>, per consumer).</summary>
        public ushort Prefetch { get; } = prefetch;

        /// <summary>Kept messages on this channel after which the walk moves to a new one.</summary>
        public int RotateAt { get; } = rotateAt;

        /// <summary>Opened with the full window because kept messages filled the last channel; never resized.</summary>
        public bool FullWindow { get; } = fullWindow;

        public string? ConsumerTag { get; set; }

        /// <summary>Deliveries received on this channel (written by the dispatch thread).</summary>
        public int Delivered;

        /// <summary>Messages left unacknowledged on this channel until the end of the walk.</summary>
        public int Kept { get; set; }

        /// <summary>Deliveries acknowledged (copies confirmed, or removed).</summary>
        public int Acked { get; set; }

        public bool ClosingByUs { get; set; }

        public TaskCompletionSource Unregistered { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    private enum WalkEventKind
    {
        Delivery,
        Ack,
        Nack,
        Return,
        UnknownReturn,
        LaneClosed,
        PublisherClosed,
    }

    /// <summary>Something that happened on the walk's channels, in the order the client read it. Tag: delivery tag or publish sequence.</summary>
    private readonly record struct WalkEvent(WalkEventKind Kind, Lane? Lane, ulong Tag, bool Multiple, FaultedMessage? Message, object? Inspection, string? Text)
    {
        public static WalkEvent Delivery(Lane lane, ulong tag, FaultedMessage? message, object? inspection) =>
            new(WalkEventKind.Delivery, lane, tag, false, message, inspection, null);

        public static WalkEvent Confirm(WalkEventKind kind, ulong sequence, bool multiple) => new(kind, null, sequence, multiple, null, null, null);

        public static WalkEvent Returned(ulong sequence, string reason) => new(WalkEventKind.Return, null, sequence, false, null, null, reason);

        public static WalkEvent Closed(WalkEventKind kind, Lane? lane, string reason) => new(kind, lane, 0, false, null, null, reason);
    }

    /// <summary>An original whose copy was published: where it came from and what to record once settled.</summary>
    private sealed record Forwarded(Lane Lane, ulong Tag, FaultedMessage Message, string Target, int Bytes);

    /// <summary>
    /// The copies awaiting their confirm, in publish order; the sequence numbers are consecutive, so
    /// a confirm finds its copy by subtraction. Each resolves once (confirmed, or failed with a reason);
    /// they leave the window oldest first.
    /// </summary>
    private sealed class ConfirmWindow
    {
        private Forwarded?[] _items = new Forwarded?[64];
        private string?[] _failures = new string?[64];
        private bool[] _resolved = new bool[64];
        private int _head;
        private ulong _headSequence;

        /// <summary>Every sequence below this one has been confirmed by a <c>multiple</c> confirm.</summary>
        private ulong _confirmedBelow;

        public int Count { get; private set; }

        public long Bytes { get; private set; }

        public ulong NextSequence => _headSequence + (ulong)Count;

        public bool HeadResolved => Count > 0 && _resolved[_head];

        public void Add(ulong sequence, Forwarded forwarded)
        {
            if (Count == 0)
            {
                _headSequence = sequence;
            }

            if (Count == _items.Length)
            {
                Grow();
            }

            var slot = (_head + Count) % _items.Length;
            _items[slot] = forwarded;
            _failures[slot] = null;
            _resolved[slot] = false;
            Count++;
            Bytes += forwarded.Bytes;
        }

        public void Confirm(ulong sequence, bool multiple)
        {
            if (!multiple)
            {
                Resolve(sequence, null);
                return;
            }

            var from = Math.Max(_headSequence, _confirmedBelow);
            for (var s = from; s <= sequence && s < NextSequence; s++)
            {
                Resolve(s, null);
            }

            _confirmedBelow = Math.Max(_confirmedBelow, sequence + 1);
        }

        public void Fail(ulong sequence, bool multiple, string reason)
        {
            for (var s = multiple ? _headSequence : sequence; s <= sequence && s < NextSequence; s++)
            {
                Resolve(s, reason);
            }
        }

        /// <summary>A returned copy failed even if a confirm for it was read first.</summary>
        public void Return(ulong sequence, string reason)
        {
            Resolve(sequence, reason);
            if (sequence >= _headSequence && sequence < NextSequence)
            {
                _failures[Slot(sequence)] ??= reason;
            }
        }

        public bool TryTakeResolved(out Forwarded forwarded, out string? failure)
        {
            if (!HeadResolved)
            {
                forwarded = null!;
                failure = null;
                return false;
            }

            failure = _failures[_head];
            forwarded = TakeHead();
            return true;
        }

        /// <summary>The oldest copy, resolved or not.</summary>
        public Forwarded TakeHead()
        {
            var forwarded = _items[_head]!;
            _items[_head] = null;
            _head = (_head + 1) % _items.Length;
            _headSequence++;
            Count--;
            Bytes -= forwarded.Bytes;
            return forwarded;
        }

        /// <summary>Late or unknown sequences (already settled, e.g. after a timeout) are ignored.</summary>
        private void Resolve(ulong sequence, string? failure)
        {
            if (sequence < _headSequence || sequence >= NextSequence)
            {
                return;
            }

            var slot = Slot(sequence);
            if (!_resolved[slot])
            {
                _resolved[slot] = true;
                _failures[slot] = failure;
            }
        }

        private int Slot(ulong sequence) => (_head + (int)(sequence - _headSequence)) % _items.Length;

        private void Grow()
        {
            var items = new Forwarded?[_items.Length * 2];
            var failures = new string?[items.Length];
            var resolved = new bool[items.Length];
            for (var i = 0; i < Count; i++)
            {
                var slot = (_head + i) % _items.Length;
                items[i] = _items[slot];
                failures[i] = _failures[slot];
                resolved[i] = _resolved[slot];
            }

            (_items, _failures, _resolved, _head) = (items, failures, resolved, 0);
        }
    }
}

/// <summary>The queue to walk does not exist.</summary>
public sealed class QueueNotFoundException(string queue) : Exception($"Queue '{queue}' does not exist.")
{
    public string Queue { get; } = queue;
}

/// <summary>A channel of the walk closed under it; everything unfinished stays in (or returns to) the queue.</summary>
public sealed class WalkInterruptedException(string message) : Exception(message);
