using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>
/// A test class's lifetime over a clean database and broker: an Api with the error-queue keys
/// (<see cref="ErrorQueueKit.ApiSettings"/>), a client holding the admin key, and a broker
/// connection for dead-lettering and reading queues.
/// </summary>
public abstract class ErrorQueueApiSession(ConveyorFixture fixture) : IAsyncLifetime
{
    protected ConveyorFixture Fixture { get; } = fixture;

    protected RunningApp App { get; private set; } = null!;

    /// <summary>Sends the admin key with every request to <see cref="App"/>.</summary>
    protected HttpClient Admin { get; private set; } = null!;

    protected TestBroker Broker { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        await Fixture.ResetAsync();
        await ErrorQueueKit.ClearOperationsAsync(Fixture);
        App = await Fixture.StartApiAsync(ErrorQueueKit.ApiSettings());
        Admin = ErrorQueueKit.Client(App.BaseAddress);
        Broker = await TestBroker.ConnectAsync(Fixture);
    }

    public async Task DisposeAsync()
    {
        await Broker.DisposeAsync();
        Admin.Dispose();
        await App.DisposeAsync();
    }
}
