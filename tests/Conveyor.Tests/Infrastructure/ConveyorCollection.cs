namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// The integration tests run in three lanes at once, <see cref="ConveyorCollection"/> (the Api, Failures and Cli
/// folders), <see cref="SecondLaneCollection"/> (ErrorQueues, Faults, Dashboard, Security, EndToEnd) and
/// <see cref="ThirdLaneCollection"/> (Worker, Redelivery, Observability, Storage), about as long as each other, each
/// with servers of its own: a database and a vhost made for it (<see cref="ConveyorFixture"/>). Within a lane, tests
/// run one at a time. A test that observes something
/// every in-process host shares (a <c>MeterListener</c> that does not keep to one host's meter factory, an
/// OpenTelemetry exporter, the Prometheus text) runs in <see cref="AloneCollection"/> instead, once the lanes
/// are done. A host's own meters (the Api's, the worker's <c>JobMetrics</c>) are read in a lane through
/// <see cref="HostMeters"/> and <see cref="WorkerMetric"/>.
/// </summary>
[CollectionDefinition(Name)]
public sealed class ConveyorCollection : ICollectionFixture<ConveyorFixture>
{
    public const string Name = "Conveyor";
}

/// <summary>The second lane of integration tests, beside the other two, with servers of its own.</summary>
[CollectionDefinition(Name)]
public sealed class SecondLaneCollection : ICollectionFixture<ConveyorFixture>
{
    public const string Name = "Conveyor, second lane";
}

/// <summary>The third lane of integration tests, beside the other two, with servers of its own.</summary>
[CollectionDefinition(Name)]
public sealed class ThirdLaneCollection : ICollectionFixture<ConveyorFixture>
{
    public const string Name = "Conveyor, third lane";
}

/// <summary>
/// Integration tests that observe what every in-process host shares, and so would see another lane's
/// jobs: they run one at a time after the lanes, with nothing beside them.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class AloneCollection : ICollectionFixture<ConveyorFixture>
{
    public const string Name = "Conveyor, alone";
}
