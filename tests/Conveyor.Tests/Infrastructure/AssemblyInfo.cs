// Collections run in parallel (as many at once as the machine has cores): the integration tests' two
// lanes, each with servers of its own, and each class of unit tests. See ConveyorCollection.
[assembly: CollectionBehavior(CollectionBehavior.CollectionPerClass)]
