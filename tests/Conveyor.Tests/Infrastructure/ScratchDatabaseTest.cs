namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// A test class whose tests each get a database of their own (<see cref="ScratchDatabase"/>), made
/// after the run's reset and dropped after the test: its statistics and counters are the test's alone.
/// </summary>
public abstract class ScratchDatabaseTest(ConveyorFixture fixture, string suffix) : IAsyncLifetime
{
    protected ConveyorFixture Fixture { get; } = fixture;

    protected ScratchDatabase Database { get; private set; } = null!;

    public virtual async Task InitializeAsync()
    {
        await Fixture.ResetAsync();
        Database = await ScratchDatabase.CreateAsync(Fixture, suffix);
    }

    public virtual async Task DisposeAsync() => await Database.DisposeAsync();
}
