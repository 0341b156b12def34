using MassTransit;
using MassTransit.Context;

namespace Conveyor.Worker.Redelivery;

/// <summary>
/// The consume context below the redelivery filter. MassTransit publishes a <c>Fault&lt;T&gt;</c> event
/// whenever a consumer throws; with attempts retried in memory and redelivered later, subscribers
/// would hear of a failure for every attempt of a job that may yet succeed. So a failed attempt's
/// fault is held (as MassTransit's own retry holds its faults): dropped when a later attempt succeeds,
/// recorded on the received message without an event when the message will be tried again, and
/// published once, for the last attempt, when the message goes to <c>_error</c>.
/// Published, never sent: MassTransit sends a fault to the envelope's <c>faultAddress</c> (else its
/// <c>responseAddress</c>) when it names one, an address any sender writes, and a send the broker refused
/// there (an exchange of another type, a queue declared with other arguments) closed the endpoint's channel:
/// the message went back to its queue instead of to <c>_error</c>, and stopped the endpoint at every delivery.
/// The worker answers no requests, so below this context neither address is seen.
/// </summary>
public sealed class FaultHoldingConsumeContext(ConsumeContext context) : ConsumeContextProxy(context)
{
    private Func<bool, Task>? _held;

    public override Uri? FaultAddress => null;

    public override Uri? ResponseAddress => null;

    public override Task NotifyFaulted<T>(ConsumeContext<T> context, TimeSpan duration, string consumerType, Exception exception)
    {
        _held = publish => publish
            ? base.NotifyFaulted(context, duration, consumerType, exception)
            : ReceiveContext.NotifyFaulted(context, duration, consumerType, exception);
        return Task.CompletedTask;
    }

    /// <summary>
    /// Another attempt starts (the in-memory retry, which finds this context as a payload: MassTransit
    /// hands it a message context around it): an earlier attempt's fault is no longer the last one.
    /// Kept, it would be told (and published) for an attempt that failed before its consumer ran,
    /// naming a failure a later attempt got past.
    /// </summary>
    public void BeginAttempt() => _held = null;

    /// <summary>The last attempt's fault, event included: the message is on its way to <c>_error</c>.</summary>
    public Task PublishHeldAsync() => Release(publish: true);

    /// <summary>
    /// The last attempt's fault on the received message only (observers see it, no event is published):
    /// the message will be tried again, from the redelivery store or from its queue. With no fault held
    /// (the attempt failed before a consumer ran: the inbox's claim), <paramref name="whenNoneHeld"/>
    /// tells the received message instead.
    /// </summary>
    public async Task RecordHeldAsync(Func<Task>? whenNoneHeld = null)
    {
        if (Take() is not { } held)
        {
            if (whenNoneHeld is not null)
            {
                LogContext.Current = null;
                await whenNoneHeld();
            }

            return;
        }

        // The received message must still learn of the fault (MassTransit's dead-letter filter would
        // otherwise take an unacknowledged-by-any-consumer message for one nobody consumes, and move it
        // to _skipped), but MassTransit logs every fault it is told of as an Error with the stack trace
        // (R-FAULT). This one will be tried again, and the caller logs that at Warning: an Error per
        // retry would page an operator for failures that heal. The log context is async-local, so
        // clearing it here silences only this call; the fault of a message on its way to _error is
        // still logged, once.
        LogContext.Current = null;
        await held(false);
    }

    private Task Release(bool publish) => Take()?.Invoke(publish) ?? Task.CompletedTask;

    private Func<bool, Task>? Take()
    {
        var held = _held;
        _held = null;
        return held;
    }
}
