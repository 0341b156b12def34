using Conveyor.Contracts;
using MassTransit;

namespace Conveyor.Worker.Inbox;

/// <summary>What identifies a message to the inbox, and the job it belongs to.</summary>
public static class InboxKeys
{
    private const string OriginalMessageIdHeader = "MT-OriginalMessageId";

    /// <summary>One consumer per receive endpoint, so the queue name is the consumer's stable id.</summary>
    public static string ConsumerIdOf(ConsumeContext context) =>
        context.ReceiveContext.InputAddress.AbsolutePath.TrimEnd('/').Split('/')[^1];

    /// <summary>For messages without a business key: the first MessageId it was sent with.</summary>
    public static string FallbackKey(ConsumeContext context) =>
        (context.Headers.Get<Guid>(OriginalMessageIdHeader) ?? context.MessageId)?.ToString()
        ?? throw new InvalidOperationException("The message has neither a business key nor a MessageId.");

    /// <summary>
    /// The job id the sender claims (<see cref="JobHeaders.JobId"/>): unchecked, so only a claim
    /// (<see cref="Jobs.JobRef"/>); the job's own id is its row's.
    /// </summary>
    public static Guid? ClaimedJobIdOf(ConsumeContext context) =>
        Guid.TryParse(context.Headers.Get<string>(JobHeaders.JobId), out var id) ? id : null;
}
