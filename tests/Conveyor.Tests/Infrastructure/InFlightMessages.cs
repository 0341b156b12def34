using System.Collections.Concurrent;
using MassTransit;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// Messages an in-process worker has taken from the broker and not yet finished (handled, or failed
/// back to the broker), on every endpoint. Every worker <see cref="ConveyorFixture.StartWorkerAsync"/>
/// starts has one, in its services.
/// </summary>
public sealed class InFlightMessages : IReceiveObserver
{
    // By delivery, not a counter: MassTransit may report the end of a faulted delivery more than once.
    private readonly ConcurrentDictionary<ReceiveContext, byte> _receiving = new(ReferenceEqualityComparer.Instance);

    public int Count => _receiving.Count;

    public Task PreReceive(ReceiveContext context)
    {
        _receiving.TryAdd(context, 0);
        return Task.CompletedTask;
    }

    public Task PostReceive(ReceiveContext context)
    {
        _receiving.TryRemove(context, out _);
        return Task.CompletedTask;
    }

    public Task ReceiveFault(ReceiveContext context, Exception exception)
    {
        _receiving.TryRemove(context, out _);
        return Task.CompletedTask;
    }

    public Task PostConsume<T>(ConsumeContext<T> context, TimeSpan duration, string consumerType) where T : class => Task.CompletedTask;

    public Task ConsumeFault<T>(ConsumeContext<T> context, TimeSpan duration, string consumerType, Exception exception) where T : class => Task.CompletedTask;
}
