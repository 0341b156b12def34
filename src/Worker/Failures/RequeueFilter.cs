using System.Runtime.ExceptionServices;
using MassTransit;

namespace Conveyor.Worker.Failures;

/// <summary>
/// First filter of a job endpoint's error pipe: a <see cref="RequeueRequestedException"/> is
/// reported as a fault (observers and the kill switch see it) and thrown again, so the transport
/// nacks the delivery with requeue instead of moving it to <c>_error</c>.
/// </summary>
public sealed class RequeueFilter : IFilter<ExceptionReceiveContext>
{
    public async Task Send(ExceptionReceiveContext context, IPipe<ExceptionReceiveContext> next)
    {
        if (context.Exception is RequeueRequestedException requeue)
        {
            await context.NotifyFaulted(requeue);
            ExceptionDispatchInfo.Throw(requeue);
        }

        await next.Send(context);
    }

    public void Probe(ProbeContext context) => context.CreateFilterScope("conveyor-requeue");
}
