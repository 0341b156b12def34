// Collections run in parallel: the integration tests' three lanes, each with servers of its own, and each
// class of unit tests (see ConveyorCollection). xunit starts at most MaxParallelThreads tests at once (its
// default, as many as the machine has cores, would leave a lane waiting on these two cores): the lanes'
// tests mostly wait on the broker, the database and their own deadlines, so four run at once.
[assembly: CollectionBehavior(CollectionBehavior.CollectionPerClass, MaxParallelThreads = 4)]
