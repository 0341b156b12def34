namespace Conveyor.Api.Backpressure;

internal static partial class BackpressureLog
{
    [LoggerMessage(EventId = 1101, Level = LogLevel.Warning,
        Message = "Could not read the job-queue depths; queue limits are not enforced until the broker answers")]
    public static partial void DepthRefreshFailed(ILogger logger, Exception exception);

    [LoggerMessage(EventId = 1102, Level = LogLevel.Information, Message = "Job-queue depths are read again")]
    public static partial void DepthsRecovered(ILogger logger);

    [LoggerMessage(EventId = 1103, Level = LogLevel.Warning,
        Message = "Could not read RabbitMQ's resource alarms from the management API; assuming none")]
    public static partial void AlarmRefreshFailed(ILogger logger, Exception exception);

    [LoggerMessage(EventId = 1104, Level = LogLevel.Warning,
        Message = "RabbitMQ blocks publishers ({Alarms}); job submissions answer 503 until the alarm clears")]
    public static partial void PublishersBlocked(ILogger logger, string alarms);

    [LoggerMessage(EventId = 1105, Level = LogLevel.Information,
        Message = "RabbitMQ's resource alarms cleared; job submissions are accepted again")]
    public static partial void PublishersUnblocked(ILogger logger);

    [LoggerMessage(EventId = 1106, Level = LogLevel.Debug, Message = "Closing the backpressure connection failed")]
    public static partial void CloseFailed(ILogger logger, Exception exception);
}
