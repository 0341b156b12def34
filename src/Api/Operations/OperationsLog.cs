namespace Conveyor.Api.Operations;

internal static partial class OperationsLog
{
    [LoggerMessage(EventId = 2001, Level = LogLevel.Information,
        Message = "Operation {OperationId}: {Kind} on {Queue} (dry run: {DryRun}) started by {RequestedBy}")]
    public static partial void Started(ILogger logger, Guid operationId, string kind, string queue, bool dryRun, string requestedBy);

    [LoggerMessage(EventId = 2002, Level = LogLevel.Information,
        Message = "Operation {OperationId}: {Kind} on {Queue} ended {State}: examined {Examined}, matched {Matched}, moved {Moved}, purged {Purged}, failed {Failed}")]
    public static partial void Finished(ILogger logger, Guid operationId, string kind, string queue, string state,
        long examined, long matched, long moved, long purged, long failed);

    [LoggerMessage(EventId = 2011, Level = LogLevel.Warning,
        Message = "Operation {OperationId} on {Queue} could not read {Unreadable} message(s) and left them in place; the first: {FirstUnreadable}")]
    public static partial void Unreadable(ILogger logger, Guid operationId, string queue, long unreadable, string? firstUnreadable);

    [LoggerMessage(EventId = 2003, Level = LogLevel.Error, Message = "Operation {OperationId} on {Queue} failed")]
    public static partial void Failed(ILogger logger, Exception exception, Guid operationId, string queue);

    [LoggerMessage(EventId = 2004, Level = LogLevel.Error,
        Message = "Operation {OperationId} lost the database connection that holds its queue lock, or could not record progress in time; stopping it")]
    public static partial void LostLock(ILogger logger, Exception exception, Guid operationId);

    [LoggerMessage(EventId = 2005, Level = LogLevel.Error,
        Message = "The result of operation {OperationId} could not be saved; recording it as failed, with its counts")]
    public static partial void ResultNotSaved(ILogger logger, Exception exception, Guid operationId);

    [LoggerMessage(EventId = 2008, Level = LogLevel.Error,
        Message = "Operation {OperationId} could not be recorded as failed either; it shows as running until it is found abandoned")]
    public static partial void FailureNotSaved(ILogger logger, Exception exception, Guid operationId);

    [LoggerMessage(EventId = 2006, Level = LogLevel.Warning,
        Message = "An operation on {Queue} was left running by a process that stopped; marked interrupted")]
    public static partial void FoundInterrupted(ILogger logger, string queue);

    [LoggerMessage(EventId = 2007, Level = LogLevel.Warning,
        Message = "{Count} operation(s) had recorded no progress for {Seconds} s: their process stopped; marked interrupted")]
    public static partial void FoundAbandoned(ILogger logger, int count, int seconds);

    [LoggerMessage(EventId = 2009, Level = LogLevel.Warning,
        Message = "Operation {OperationId}: could not count the selected messages whose job row is gone; its jobsMissing is left unknown")]
    public static partial void JobsNotChecked(ILogger logger, Exception exception, Guid operationId);

    [LoggerMessage(EventId = 2010, Level = LogLevel.Warning,
        Message = "An inspection of {Queue} lost the database session that holds its queue lock, or it stopped answering; stopped the inspection")]
    public static partial void InspectionLostLock(ILogger logger, Exception exception, string queue);
}
