namespace Conveyor.Storage.Operations;

public static class ErrorQueueOperationQueries
{
    /// <summary>
    /// The operations a deployment on <paramref name="virtualHost"/> owns: its own, and those recorded
    /// before operations named their vhost (<see cref="ErrorQueueOperation.VirtualHost"/> null), which
    /// every deployment sees as before. Another vhost's are none of its business, though they share the table.
    /// </summary>
    public static IQueryable<ErrorQueueOperation> OfVirtualHost(this IQueryable<ErrorQueueOperation> operations, string virtualHost) =>
        operations.Where(o => o.VirtualHost == virtualHost || o.VirtualHost == null);
}
