namespace Conveyor.Worker.Jobs;

/// <summary>Identifies a job row: by (kind, business key), with the Api's job id when the message carried one.</summary>
public readonly record struct JobRef(string Kind, string BusinessKey, Guid? JobId);
