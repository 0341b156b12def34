namespace Conveyor.Worker.Failures;

/// <summary>
/// A long job's copy that met another worker's live lease on its job more often than its endpoint's
/// <c>MaxLeaseDeferrals</c> allows (<see cref="Messaging.ConsumerEndpointOptions.MaxLeaseDeferrals"/>). Not a failure of
/// the job, which the run holding the lease settles: it goes to <c>_error</c> with this reason, not retried (it would
/// only meet the lease again), and leaves the job as it is, as an idempotency conflict does.
/// </summary>
public sealed class LeaseDeferralsSpentException : Exception
{
    public LeaseDeferralsSpentException(string consumerId, string key, int deferrals, string setting)
        : base($"This copy of {consumerId} '{key}' met another worker's lease on its job each time it came back: parked {deferrals} time(s), " +
               $"the most {setting} allows, it was not run. The job is left to the run that holds the lease (inbox.lease_owner). " +
               "If that run never ends, stop the worker that holds it; once the job has ended, purge this copy, or move it back if the job did not succeed.")
    {
    }

    public LeaseDeferralsSpentException() { }

    public LeaseDeferralsSpentException(string message) : base(message) { }

    public LeaseDeferralsSpentException(string message, Exception innerException) : base(message, innerException) { }
}
