namespace Conveyor.Api.ErrorQueues;

internal static partial class ErrorQueuesLog
{
    [LoggerMessage(EventId = 2101, Level = LogLevel.Warning,
        Message = "Could not list the error queues for the depth gauge; keeping the last known depths")]
    public static partial void DepthRefreshFailed(ILogger logger, Exception exception);

    [LoggerMessage(EventId = 2102, Level = LogLevel.Information,
        Message = "{Who} inspected {Queue} ({What}: {Examined} message(s) examined)")]
    public static partial void Inspected(ILogger logger, string who, string queue, string what, long examined);

    [LoggerMessage(EventId = 2103, Level = LogLevel.Warning,
        Message = "{Who} inspected {Queue} ({What}: {Examined} message(s) examined), which stopped early: {Reason}")]
    public static partial void InspectedPartly(ILogger logger, string who, string queue, string what, long examined, string reason);

    [LoggerMessage(EventId = 2104, Level = LogLevel.Warning,
        Message = "Could not read the error queues' counts from the broker; the listing gives the management API's, which lag by a few seconds")]
    public static partial void ExactCountsUnread(ILogger logger, Exception exception);
}
