using System.Collections.Concurrent;
using Conveyor.ServiceDefaults;
using Microsoft.Extensions.Options;
using MassTransit;
using MassTransit.RabbitMqTransport;
using RabbitMQ.Client.Exceptions;

namespace Conveyor.Worker.Messaging;

/// <summary>
/// Decides, once per queue at start-up, whether the worker may declare it lazy
/// (<see cref="RabbitMqOptions.LazyQueues"/>): yes when it does not exist yet or already is lazy; no
/// when it exists in the broker's default mode, which the broker would refuse to redeclare
/// (<c>PRECONDITION_FAILED</c>): for a job queue that would keep the worker from consuming at all,
/// for an <c>_error</c> queue from dead-lettering. Such a queue is declared as it is, with a warning
/// that says how to make it lazy. Queues this worker cannot probe (the broker is down) are declared
/// lazy, as configured.
/// </summary>
/// <remarks>
/// Over AMQP the only way to learn a queue's arguments is to have the broker compare them: a passive
/// declaration says whether the queue exists (creating nothing), then a declaration with
/// <c>x-queue-mode=lazy</c> succeeds or is refused. It runs while MassTransit configures the
/// endpoints, which is synchronous, before anything consumes; MassTransit declares the <c>_error</c>
/// and <c>_skipped</c> queues later, at their first message, from the decisions made then.
/// </remarks>
public sealed partial class QueueModeProbe(IOptions<RabbitMqOptions> options, ILogger<QueueModeProbe> logger)
{
    private const string ModeArgument = "x-queue-mode";
    private const string Lazy = "lazy";

    private static readonly Dictionary<string, object?> LazyArguments = new() { [ModeArgument] = Lazy };

    private readonly ConcurrentDictionary<string, QueueMode> _modes = new(StringComparer.Ordinal);

    /// <summary>Set when a probe could not reach the broker: the others are not tried (each would wait as long).</summary>
    private volatile bool _unreachable;

    private enum QueueMode
    {
        Missing,
        Lazy,
        Default,
    }

    /// <summary>True when <paramref name="queue"/> may be declared with <c>x-queue-mode=lazy</c>.</summary>
    public bool MayDeclareLazy(string queue) => _modes.GetOrAdd(queue, Probe) != QueueMode.Default;

    /// <summary>
    /// For MassTransit's <c>_error</c> and <c>_skipped</c> queues, which copy the job queue's arguments:
    /// declares an existing one in the mode it has.
    /// </summary>
    public void Match(IRabbitMqQueueBindingConfigurator settings)
    {
        // MassTransit names the _error (_skipped) exchange and queue alike.
        if (settings is not EntitySettings { ExchangeName: { } queue })
        {
            return;
        }

        switch (_modes.GetOrAdd(queue, Probe))
        {
            case QueueMode.Default:
                // Null removes the argument (MassTransit's Lazy = false would write "default", which
                // the broker also finds inequivalent to none).
                settings.SetQueueArgument(ModeArgument, null);
                break;
            case QueueMode.Lazy:
                settings.SetQueueArgument(ModeArgument, Lazy);
                break;
        }
    }

    private QueueMode Probe(string queue)
    {
        if (_unreachable)
        {
            return QueueMode.Missing;
        }

        var broker = options.Value;
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(broker.ConnectTimeoutSeconds));
            // Start-up, on the host's thread: MassTransit's endpoint configuration is synchronous.
            return ProbeAsync(broker, queue, timeout.Token).GetAwaiter().GetResult();
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            _unreachable = true;
            LogNotProbed(logger, exception, queue);
            return QueueMode.Missing;
        }
    }

    private async Task<QueueMode> ProbeAsync(RabbitMqOptions broker, string queue, CancellationToken cancellationToken)
    {
        await using var connection = await broker.ConnectAsync("conveyor-worker-queue-probe", cancellationToken);
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
            when (exception.ShutdownReason is { ReplyCode: 406 } reason && reason.ReplyText.Contains(ModeArgument, StringComparison.Ordinal))
        {
            LogKeptDefaultMode(logger, queue, broker.VirtualHost);
            return QueueMode.Default;
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Queue {Queue} in vhost {VirtualHost} exists in the broker's default mode, not lazy; it is declared as it is. " +
        "To make it lazy (ADR 0005): apply a policy with queue-mode=lazy to it, or drain and delete it so that the worker declares it anew; RabbitMq__LazyQueues=false silences this.")]
    private static partial void LogKeptDefaultMode(ILogger logger, string queue, string virtualHost);

    [LoggerMessage(Level = LogLevel.Debug, Message = "Could not probe queue {Queue} (nor, after it, the other job queues); declaring them lazy as configured")]
    private static partial void LogNotProbed(ILogger logger, Exception exception, string queue);
}
