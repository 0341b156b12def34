namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// The integration tests run in two lanes at once, <see cref="ConveyorCollection"/> and
/// <see cref="SecondLaneCollection"/>, each with servers of its own: a database and a vhost made for it
/// (<see cref="ConveyorFixture"/>). Within a lane, tests run one at a time. A test that observes something
/// every in-process host shares (a <c>MeterListener</c> that does not keep to one host's meter factory, an
/// OpenTelemetry exporter, the Prometheus text) runs in <see cref="AloneCollection"/> instead, once both lanes
/// are done. A host's own meters (the Api's, the worker's <c>JobMetrics</c>) are read in a lane through
/// <see cref="HostMeters"/> and <see cref="WorkerMetric"/>.
/// </summary>
[CollectionDefinition(Name)]
public sealed class ConveyorCollection : ICollectionFixture<ConveyorFixture>
{
    public const string Name = "Conveyor";
}

/// <summary>The second lane of integration tests, beside <see cref="ConveyorCollection"/>, with servers of its own.</summary>
[CollectionDefinition(Name)]
public sealed class SecondLaneCollection : ICollectionFixture<ConveyorFixture>
{
    public const string Name = "Conveyor, second lane";
}

/// <summary>
/// Integration tests that observe what every in-process host shares, and so would see the other lane's
/// jobs: they run one at a time after both lanes, with nothing beside them.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class AloneCollection : ICollectionFixture<ConveyorFixture>
{
    public const string Name = "Conveyor, alone";
}
