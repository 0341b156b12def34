namespace Conveyor.Worker.Jobs;

/// <summary>
/// Identifies a job row: by (kind, business key). <paramref name="JobId"/> is the row's id once the
/// inbox has claimed the job; before that, the id the message claims (its <c>Conveyor-Job-Id</c>
/// header, which any sender can set). A claimed id never selects a row: it only names the row when a
/// write creates it, and only when no other row holds that id (the Api's row was removed after an
/// unconfirmed publish, and the command arrived anyway).
/// <paramref name="Attempt"/> is the attempt this delivery's claim counted (<c>jobs.attempts</c> as
/// the claim left it; <see cref="ClaimedAttempt"/>): the status writes of its failure path apply only
/// while it is still the job's latest attempt. Null when not known (the claim failed before counting):
/// they then apply to whatever attempt is latest.
/// </summary>
public readonly record struct JobRef(string Kind, string BusinessKey, Guid? JobId, int? Attempt = null);
