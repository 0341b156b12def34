using MassTransit;
using MassTransit.Context;

namespace Conveyor.Worker.Inbox;

/// <summary>
/// The message's consume context as a leased run sees it: everything passes through to the received
/// context but the cancellation token, which also fires when the run's lease is lost. The consumer
/// and the services of its scope (resolved with this context) observe it as
/// <c>context.CancellationToken</c>.
/// </summary>
public sealed class LeaseConsumeContext<T>(ConsumeContext<T> context, CancellationToken cancellationToken)
    : ConsumeContextProxy<T>(context)
    where T : class
{
    public override CancellationToken CancellationToken => cancellationToken;
}
