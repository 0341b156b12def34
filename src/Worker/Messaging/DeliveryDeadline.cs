namespace Conveyor.Worker.Messaging;

/// <summary>
/// How long a delivery may stay unacked before a long job's run on it is stopped: RabbitMQ's
/// consumer_timeout (<c>RabbitMq:ConsumerTimeoutSeconds</c>) less a margin for what follows the
/// stop (releasing the lease, storing the redelivery, the ack). Left to run into the timeout, the
/// broker would close the channel, cancel every delivery on it and deliver the job again with
/// nothing counted, so a job that always runs too long would start over forever.
/// </summary>
public static class DeliveryDeadline
{
    /// <summary>The margin's cap: 10 % of the timeout, but never more than this.</summary>
    public static readonly TimeSpan MaxMargin = TimeSpan.FromSeconds(60);

    /// <summary>Null when the broker has no consumer_timeout (0).</summary>
    public static TimeSpan? Of(int consumerTimeoutSeconds)
    {
        if (consumerTimeoutSeconds <= 0)
        {
            return null;
        }

        var timeout = TimeSpan.FromSeconds(consumerTimeoutSeconds);
        var margin = timeout / 10 < MaxMargin ? timeout / 10 : MaxMargin;
        return timeout - margin;
    }
}
