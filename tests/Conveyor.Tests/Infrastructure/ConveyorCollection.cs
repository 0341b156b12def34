namespace Conveyor.Tests.Infrastructure;

/// <summary>Every integration test shares one set of servers and runs one at a time.</summary>
[CollectionDefinition(Name)]
public sealed class ConveyorCollection : ICollectionFixture<ConveyorFixture>
{
    public const string Name = "Conveyor";
}
