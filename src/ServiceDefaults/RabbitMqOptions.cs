using System.ComponentModel.DataAnnotations;

namespace Conveyor.ServiceDefaults;

/// <summary>Where the broker is. Environment variables: <c>RabbitMq__Host</c>, <c>RabbitMq__Port</c>, ...</summary>
public sealed class RabbitMqOptions
{
    public const string SectionName = "RabbitMq";

    [Required]
    public string Host { get; set; } = "127.0.0.1";

    [Range(1, 65535)]
    public int Port { get; set; } = 5672;

    [Required]
    public string VirtualHost { get; set; } = "/";

    [Required]
    public string Username { get; set; } = "guest";

    /// <summary>From the environment or a secret store only.</summary>
    [Required]
    public string Password { get; set; } = "guest";

    /// <summary>HTTP port of the management plugin (queue depths, error-queue operations).</summary>
    [Range(1, 65535)]
    public int ManagementPort { get; set; } = 15672;

    /// <summary>Seconds to wait for a connection or a publisher confirm before giving up.</summary>
    [Range(1, 300)]
    public int ConnectTimeoutSeconds { get; set; } = 5;

    /// <summary>
    /// Declare the job queues as quorum queues (replicated; for a clustered RabbitMQ). Decide before
    /// the first deployment: RabbitMQ cannot change the type of an existing queue.
    /// </summary>
    public bool QuorumQueues { get; set; }
}
