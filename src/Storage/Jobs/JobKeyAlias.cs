namespace Conveyor.Storage.Jobs;

/// <summary>
/// An <c>Idempotency-Key</c> that names a job it did not create: a keyed submission answered with a job
/// that existed already under the same business id and command. A key names one job whichever way it was
/// first answered, so the key sent again with another body is refused as a reused key, and the request it
/// was first sent with gets its job again. Goes with its job (a cascading foreign key).
/// </summary>
public sealed class JobKeyAlias
{
    /// <summary>The key; the Api takes one for a job's own <see cref="Job.IdempotencyKey"/> or for an alias, never both.</summary>
    public required string IdempotencyKey { get; set; }

    public Guid JobId { get; set; }

    /// <summary>The hash of the request the key was first sent with, compared as <see cref="Job.RequestHash"/> is.</summary>
    public required string RequestHash { get; set; }

    public DateTimeOffset CreatedAt { get; set; }
}
