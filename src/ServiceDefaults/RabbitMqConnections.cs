using RabbitMQ.Client;

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
}
