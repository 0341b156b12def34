using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Worker;

[Collection(ConveyorCollection.Name)]
public sealed class QuorumQueueTests(ConveyorFixture fixture)
{
    [Fact]
    public async Task With_quorum_queues_on_the_worker_declares_its_job_queues_as_quorum_queues()
    {
        // A vhost of its own: RabbitMQ cannot redeclare the run's classic queues as quorum queues.
        await using var vhost = await fixture.ScratchVhostAsync("quorum");
        await using var worker = await fixture.StartWorkerAsync(vhost.WorkerSettingsWith(("RabbitMq:QuorumQueues", "true")));

        foreach (var queue in new[] { "charge-payment", "deliver-webhook", "generate-report" })
        {
            Assert.Equal("quorum", await fixture.Rabbit.QueueTypeAsync(vhost.Name, queue));
        }
    }
}
