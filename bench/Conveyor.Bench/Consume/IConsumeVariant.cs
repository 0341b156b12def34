using Conveyor.Bench.Infrastructure;

namespace Conveyor.Bench.Consume;

/// <summary>One way to consume the <c>charge-payment</c> queue; each calls the instant gateway per message.</summary>
public interface IConsumeVariant
{
    string Name { get; }

    string Description { get; }

    /// <summary>Starts consuming; every finished message calls <see cref="DrainClock.Completed"/>.</summary>
    Task<IAsyncDisposable> StartAsync(ConsumeSettings settings, DrainClock clock);

    /// <summary>Throws when the run did not do what it should have (rows missing, requests missing).</summary>
    Task VerifyAsync(int messages);
}
