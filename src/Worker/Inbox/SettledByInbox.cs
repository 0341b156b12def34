using MassTransit;

namespace Conveyor.Worker.Inbox;

/// <summary>
/// A message the inbox settles without running its consumer (a duplicate, a job that may no longer
/// run, a copy parked behind another worker's lease) has been handled all the same. MassTransit moves
/// a message no consumer reported as consumed to <c>&lt;queue&gt;_skipped</c>, the queue for messages
/// nobody understands, so every duplicate would pile up there; the inbox reports it consumed instead,
/// under the consumer's id.
/// </summary>
public static class SettledByInbox
{
    public static Task NotifyAsync<T>(ConsumeContext<T> context, string consumerId) where T : class =>
        context.NotifyConsumed(context, TimeSpan.Zero, consumerId);
}
