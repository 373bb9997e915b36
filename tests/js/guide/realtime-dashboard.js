class RealTimeDashboard {
  constructor() {
    this.socket = null;
    this.eventSource = null;
    this.subscriptions = new Set();
  }

  // WebSocket connection
  connectWebSocket() {
    this.socket = new WebSocket(`ws://${window.location.host}/api/v1/dashboard/ws`);
    
    this.socket.onopen = () => {
      this.subscribeToEvents(['file_change', 'auto_commit', 'progress_update']);
    };
    
    this.socket.onmessage = (event) => {
      this.handleEvent(JSON.parse(event.data));
    };
    
    this.socket.onclose = () => {
      console.log('WebSocket disconnected, reconnecting...');
      setTimeout(() => this.connectWebSocket(), 5000);
    };
  }

  // SSE connection (fallback)
  connectSSE() {
    const eventTypes = Array.from(this.subscriptions).join(',');
    this.eventSource = new EventSource(
      `/api/v1/sse/events?event_types=${eventTypes}`
    );
    
    this.eventSource.onmessage = (event) => {
      this.handleEvent(JSON.parse(event.data));
    };
  }

  subscribeToEvents(eventTypes) {
    eventTypes.forEach(type => this.subscriptions.add(type));
    
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify({
        type: 'subscribe',
        event_types: Array.from(this.subscriptions),
        project_id: this.projectId
      }));
    }
  }

  handleEvent(event) {
    switch(event.type) {
      case 'file_change':
        this.updateFileChangeCounter(event.data);
        break;
      case 'auto_commit':
        this.showCommitNotification(event.data);
        break;
      case 'progress_update':
        this.updateProgressBar(event.data);
        break;
      case 'risk_alert':
        this.showRiskAlert(event.data);
        break;
    }
  }
}
