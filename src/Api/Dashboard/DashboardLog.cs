namespace Conveyor.Api.Dashboard;

internal static partial class DashboardLog
{
    [LoggerMessage(EventId = 2401, Level = LogLevel.Information, Message = "Dashboard sign-in as {Who} from {Client}")]
    public static partial void SignedIn(ILogger logger, string who, string? client);

    // The presented key is never logged, not even in part.
    [LoggerMessage(EventId = 2402, Level = LogLevel.Warning, Message = "Dashboard sign-in refused from {Client}: unknown API key")]
    public static partial void SignInRefused(ILogger logger, string? client);

    [LoggerMessage(EventId = 2403, Level = LogLevel.Information, Message = "Dashboard sign-out of {Who}")]
    public static partial void SignedOut(ILogger logger, string who);

    // Debug only: no browser sends such a form, and anyone may post one.
    [LoggerMessage(EventId = 2404, Level = LogLevel.Debug, Message = "Dashboard sign-in form from {Client} could not be read: {Reason}")]
    public static partial void SignInFormUnreadable(ILogger logger, string? client, string reason);
}
