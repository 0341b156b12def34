using Conveyor.Contracts;
using Conveyor.ServiceDefaults;
using MassTransit;
using MassTransit.RabbitMqTransport;
using Microsoft.Extensions.Options;
using RabbitMQ.Client;
using RabbitMQ.Client.Exceptions;

namespace Conveyor.Worker.Messaging;

/// <summary>
/// Decides, once at start-up, which of the worker's queues it may declare lazy
/// (<see cref="RabbitMqOptions.LazyQueues"/>): those that do not exist yet or already are lazy; not
/// those that exist in the broker's default mode, which the broker would refuse to redeclare
/// (<c>PRECONDITION_FAILED</c>): for a job queue that would keep the worker from consuming at all,
/// for an <c>_error</c> queue from dead-lettering. Such a queue is declared as it is, with a warning
/// that says how to make it lazy. Queues this worker cannot probe (the broker is down) are declared
/// lazy, as configured.
/// </summary>
/// <remarks>
/// Over AMQP the only way to learn a queue's arguments is to have the broker compare them: a passive
/// declaration says whether the queue exists (creating nothing), then a declaration with
/// <c>x-queue-mode=lazy</c> succeeds or is refused. Every job queue and its <c>_error</c> and
/// <c>_skipped</c> queues are probed together, on one connection, the first time MassTransit
/// configures an endpoint: that configuration is synchronous, so start-up waits for the probe there,
/// once, before anything consumes. MassTransit declares the <c>_error</c> and <c>_skipped</c> queues
/// later, at their first message; <see cref="Match"/> then only reads what was found.
/// </remarks>
public sealed partial class QueueModeProbe
{
    private static readonly Dictionary<string, object?> LazyArguments = new() { [RabbitMqOptions.QueueModeArgument] = RabbitMqOptions.LazyQueueMode };

    private readonly IOptions<RabbitMqOptions> _options;
    private readonly ILogger<QueueModeProbe> _logger;
    private readonly Lazy<Dictionary<string, QueueMode>> _modes;

    public QueueModeProbe(IOptions<RabbitMqOptions> options, ILogger<QueueModeProbe> logger)
    {
        _options = options;
        _logger = logger;
        _modes = new(ProbeAll, LazyThreadSafetyMode.ExecutionAndPublication);
    }

    private enum QueueMode
    {
        Missing,
        Lazy,
        Default,
    }

    /// <summary>True when <paramref name="queue"/> may be declared with <c>x-queue-mode=lazy</c>.</summary>
    public bool MayDeclareLazy(string queue) => _modes.Value.GetValueOrDefault(queue) != QueueMode.Default;

    /// <summary>
    /// For MassTransit's <c>_error</c> and <c>_skipped</c> queues, which copy the job queue's arguments:
    /// declares an existing one in the mode it had at start-up. Reads the probe's findings only.
    /// </summary>
    public void Match(IRabbitMqQueueBindingConfigurator settings)
    {
        // MassTransit names the _error (_skipped) exchange and queue alike.
        if (!_modes.IsValueCreated || settings is not EntitySettings { ExchangeName: { } queue })
        {
            return;
        }

        switch (_modes.Value.GetValueOrDefault(queue))
        {
            case QueueMode.Default:
                // Null removes the argument (MassTransit's Lazy = false would write "default", which
                // the broker also finds inequivalent to none).
                settings.SetQueueArgument(RabbitMqOptions.QueueModeArgument, null);
                break;
            case QueueMode.Lazy:
                settings.SetQueueArgument(RabbitMqOptions.QueueModeArgument, RabbitMqOptions.LazyQueueMode);
                break;
        }
    }

    private Dictionary<string, QueueMode> ProbeAll()
    {
        var broker = _options.Value;
        var modes = new Dictionary<string, QueueMode>(StringComparer.Ordinal);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(broker.ConnectTimeoutSeconds));
        try
        {
            // Start-up, on the host's thread: MassTransit's endpoint configuration is synchronous.
            ProbeAllAsync(broker, modes, timeout.Token).GetAwaiter().GetResult();
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            // What was not probed counts as missing: declared lazy, as configured.
            LogNotProbed(_logger, exception);
        }

        return modes;
    }

    private async Task ProbeAllAsync(RabbitMqOptions broker, Dictionary<string, QueueMode> modes, CancellationToken cancellationToken)
    {
        await using var connection = await broker.ConnectAsync("conveyor-worker-queue-probe", cancellationToken);
        foreach (var kind in JobKinds.All)
        {
            foreach (var queue in new[] { kind, kind + RabbitMqOptions.ErrorQueueSuffix, kind + RabbitMqOptions.SkippedQueueSuffix })
            {
                modes[queue] = await ProbeAsync(connection, broker, queue, cancellationToken);
            }
        }
    }

    private async Task<QueueMode> ProbeAsync(IConnection connection, RabbitMqOptions broker, string queue, CancellationToken cancellationToken)
    {
        // A passive declaration of a missing queue closes its channel, hence a channel of its own.
        await using (var passive = await connection.CreateChannelAsync(cancellationToken: cancellationToken))
        {
            try
            {
                await passive.QueueDeclarePassiveAsync(queue, cancellationToken);
            }
            catch (OperationInterruptedException exception) when (exception.ShutdownReason is { ReplyCode: 404 })
            {
                return QueueMode.Missing;
            }
        }

        await using var channel = await connection.CreateChannelAsync(cancellationToken: cancellationToken);
        try
        {
            await channel.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false, LazyArguments, cancellationToken: cancellationToken);
            return QueueMode.Lazy;
        }
        catch (OperationInterruptedException exception)
            when (exception.ShutdownReason is { ReplyCode: 406 } reason && reason.ReplyText.Contains(RabbitMqOptions.QueueModeArgument, StringComparison.Ordinal))
        {
            LogKeptDefaultMode(_logger, queue, broker.VirtualHost);
            return QueueMode.Default;
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Queue {Queue} in vhost {VirtualHost} exists in the broker's default mode, not lazy; it is declared as it is. " +
        "To make it lazy (ADR 0005): apply a policy with queue-mode=lazy to it, or drain and delete it so that the worker declares it anew; RabbitMq__LazyQueues=false silences this.")]
    private static partial void LogKeptDefaultMode(ILogger logger, string queue, string virtualHost);

    [LoggerMessage(Level = LogLevel.Debug, Message = "Could not probe the job queues' modes; those not probed are declared lazy as configured")]
    private static partial void LogNotProbed(ILogger logger, Exception exception);
}
