namespace Conveyor.Storage.Operations;

public static class ErrorQueueOperationKinds
{
    public const string Move = "move";
    public const string Purge = "purge";
}
