namespace Conveyor.Storage.Inbox;

public static class InboxStatus
{
    public const string Done = "done";
    public const string Processing = "processing";
}
