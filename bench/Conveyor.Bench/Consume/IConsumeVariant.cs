using Conveyor.Bench.Infrastructure;

namespace Conveyor.Bench.Consume;

/// <summary>One way to consume the <c>charge-payment</c> queue; each calls the instant gateway per message.</summary>
public interface IConsumeVariant
{
    string Name { get; }

    string Description { get; }

    /// <summary>
    /// Starts the consumer's process-long parts (host, connection) with consuming paused: a worker
    /// is a long-lived process, so one host serves every drain of a settings group and its code is
    /// JIT-compiled once, as in production.
    /// </summary>
    Task<IConsumeSession> OpenAsync(ConsumeSettings settings);

    /// <summary>Throws when the drain did not do what it should have (rows missing, requests missing).</summary>
    Task VerifyAsync(int messages);
}

/// <summary>A started consumer whose consuming can be paused while the queue is refilled.</summary>
public interface IConsumeSession : IAsyncDisposable
{
    /// <summary>Starts consuming; every finished message calls <see cref="DrainClock.Completed"/>.</summary>
    Task ResumeAsync(DrainClock clock);

    /// <summary>Stops consuming (waits for messages in flight) until the next <see cref="ResumeAsync"/>.</summary>
    Task PauseAsync();
}
