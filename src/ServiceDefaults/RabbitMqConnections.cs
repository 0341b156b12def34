using RabbitMQ.Client;
using RabbitMQ.Client.Exceptions;

namespace Conveyor.ServiceDefaults;

public static class RabbitMqConnections
{
    /// <summary>
    /// A plain RabbitMQ.Client connection for the work MassTransit does not do (confirmed
    /// republishes, passive declares, error-queue walks). No automatic recovery: each caller
    /// reconnects on its next use, so it never works on a half-recovered connection.
    /// </summary>
    public static Task<IConnection> ConnectAsync(this RabbitMqOptions broker, string clientName, CancellationToken cancellationToken)
    {
        var factory = new ConnectionFactory
        {
            HostName = broker.Host,
            Port = broker.Port,
            VirtualHost = broker.VirtualHost,
            UserName = broker.Username,
            Password = broker.Password,
            RequestedConnectionTimeout = TimeSpan.FromSeconds(broker.ConnectTimeoutSeconds),
            AutomaticRecoveryEnabled = false,
            TopologyRecoveryEnabled = false,
        };
        return factory.CreateConnectionAsync(broker.ClientName(clientName), cancellationToken);
    }

    /// <summary>
    /// A passive <c>queue.declare</c>: the queue's ready messages and consumers, or null when it does not exist. The broker
    /// closes the channel of a passive declare that finds no queue, so after a null the caller needs another channel.
    /// </summary>
    public static async Task<QueueDeclareOk?> DeclarePassiveIfExistsAsync(this IChannel channel, string queue, CancellationToken cancellationToken)
    {
        try
        {
            return await channel.QueueDeclarePassiveAsync(queue, cancellationToken);
        }
        catch (OperationInterruptedException exception) when (exception.ShutdownReason?.ReplyCode == Constants.NotFound)
        {
            return null;
        }
    }
}
