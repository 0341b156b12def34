namespace Conveyor.ServiceDefaults;

public static class AbandonedTasks
{
    /// <summary>
    /// Leaves a task no one will await any more (its wait timed out) to finish on its own: a failure it
    /// ends with is observed here, so it is not reported as an unobserved task exception.
    /// </summary>
    public static void Abandon(this Task task) =>
        _ = task.ContinueWith(static finished => finished.Exception, CancellationToken.None,
            TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
}
