namespace Conveyor.Worker.Failures;

/// <summary>
/// The attempt decided nothing about the message because the worker's own infrastructure (its
/// database) is unavailable: the message goes back to its queue unchanged, neither to a delayed
/// redelivery nor to <c>_error</c>, and keeps its retry budget.
/// </summary>
public sealed class RequeueRequestedException(string message, Exception inner) : Exception(message, inner);
